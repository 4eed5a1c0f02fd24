// The dashboard in a real browser (Debian's chromium, headless, driven by playwright-core)
// against a real gateway that gateway/tests/it/dashboard.rs starts. Every check throws with what it
// saw; the process exits non-zero on the first failure.
//
// Environment: ADMIN_URL, HTTP_URL, WRITER_TOKEN, READER_TOKEN, CHROMIUM (default
// /usr/bin/chromium), SCREENSHOTS (a folder: screenshots of each panel under load).

import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';

const admin = process.env.ADMIN_URL;
const http = process.env.HTTP_URL;
const writer = process.env.WRITER_TOKEN;
const reader = process.env.READER_TOKEN;
const screenshots = process.env.SCREENSHOTS || '';
if (!admin || !http || !writer || !reader) throw new Error('ADMIN_URL, HTTP_URL, WRITER_TOKEN and READER_TOKEN are needed');

const started = Date.now();
const log = (message) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)} s] ${message}`);

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

async function waitFor(what, probe, { timeoutMs = 20000, everyMs = 200 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await probe();
    if (last && last.ok) return last;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last seen: ${JSON.stringify(last)}`);
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}

async function apiGet(path) {
  const response = await fetch(`${admin}${path}`, { headers: { Authorization: `Bearer ${writer}` } });
  check(response.ok, `GET ${path}: ${response.status}`);
  return response.json();
}

async function apiPost(path, body, method = 'POST') {
  const response = await fetch(`${admin}${path}`, {
    method,
    headers: { Authorization: `Bearer ${writer}`, 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  const value = await response.json();
  check(response.ok, `POST ${path}: ${response.status} ${JSON.stringify(value)}`);
  return value;
}

// Load on mlp: a few workers, each a loop of inference calls. Bounded in count and time; it
// stops by itself.
const load = { stop: false, sent: 0, failed: 0 };
const LOAD_LIMIT = { requests: 200000, ms: 120000 };
const inference = JSON.stringify({ inputs: [{ name: 'x', shape: [1, 64], datatype: 'FP32', data: Array.from({ length: 64 }, (_, i) => (i % 7) / 7) }] });
async function worker() {
  while (!load.stop && load.sent < LOAD_LIMIT.requests && Date.now() - started < LOAD_LIMIT.ms) {
    load.sent += 1;
    try {
      const response = await fetch(`${http}/v2/models/mlp/infer`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: inference });
      if (!response.ok) load.failed += 1;
      await response.arrayBuffer();
    } catch {
      load.failed += 1;
    }
  }
}

async function experimentCounts() {
  const experiment = await apiGet('/v1/models/mlp/experiment');
  return Object.fromEntries(experiment.versions.map((v) => [v.version, v.requests]));
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
const problems = [];
let workers = [];
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    // The browser logs the API's refusals that this test provokes (no token yet, a
    // reader's write); anything else is a fault of the page.
    const expected = /Failed to load resource: .*status of (401|403)/.test(message.text());
    if (message.type() === 'error' && !expected) problems.push(`console error: ${message.text()}`);
  });

  // Tokens are configured, so the page asks for one; a reader's token shows everything.
  await page.goto(`${admin}/`);
  await page.getByLabel('Admin token').waitFor({ state: 'visible' });
  check(await page.locator('main').isHidden(), 'the panels stay hidden until a token is given');
  await page.getByLabel('Admin token').fill(reader);
  await page.getByRole('button', { name: 'Sign in' }).click();

  // mlp's versions appear with their runtimes.
  const mlpModels = page.locator('#models-body [data-model="mlp"]');
  await mlpModels.locator('tr[data-version="2"]').waitFor();
  const runtimes = await mlpModels.locator('tbody tr').evaluateAll((rows) => rows.map((row) => [row.dataset.version, row.cells[3].textContent]));
  check(JSON.stringify(runtimes) === JSON.stringify([['1', 'onnx'], ['2', 'libtorch']]), `mlp's versions and runtimes: ${JSON.stringify(runtimes)}`);
  log(`mlp's versions shown: ${JSON.stringify(runtimes)}`);

  // A reader may look but not change: the page says why, and the registry is untouched.
  const weights = page.locator('#traffic-body form[data-model="mlp"]');
  await weights.getByLabel('version 1').fill('5');
  await weights.getByRole('button', { name: 'Apply weights' }).click();
  await waitFor('the refusal of a reader token', async () => {
    const text = await weights.locator('.result').textContent();
    return { ok: /Not applied: .*only read/.test(text), text };
  });
  check(JSON.stringify((await apiGet('/v1/models/mlp/traffic')).weights) === '{}', 'a reader token changed no weight');
  log('a reader token is refused a weight change, with the reason');

  // Signing out forgets the token; the writer signs in.
  await page.getByRole('button', { name: 'Forget token' }).click();
  await page.getByLabel('Admin token').waitFor({ state: 'visible' });
  check(await page.evaluate(() => sessionStorage.length) === 0, 'the token is gone from session storage');
  await page.getByLabel('Admin token').fill(writer);
  await page.getByLabel('Admin token').press('Enter');
  await mlpModels.locator('tr[data-version="2"]').waitFor();

  workers = Array.from({ length: 4 }, worker);

  // The charts update under load: new points arrive, and the version serving shows a rate.
  const rateChart = page.locator('#figures-body [data-model="mlp"] figure[data-kind="rate"]');
  const first = await waitFor('the request-rate chart to show traffic', async () => {
    const points = Number(await rateChart.getAttribute('data-points'));
    const latest = JSON.parse((await rateChart.getAttribute('data-latest')) || '{}');
    return { ok: (latest.v2 || 0) > 0, points, latest };
  });
  await waitFor('more points on the chart', async () => {
    const points = Number(await rateChart.getAttribute('data-points'));
    return { ok: points > first.points, points, before: first.points };
  });
  const canvases = await page.locator('#figures-body [data-model="mlp"] canvas').count();
  check(canvases === 3, `three uPlot canvases for mlp, not ${canvases}`);
  log(`the rate chart moves: ${first.points} points, then more; latest ${JSON.stringify(first.latest)}`);

  // A weight changed in the page, by keyboard, changes it in the registry...
  await weights.getByLabel('version 1').fill('100');
  await weights.getByLabel('version 2').fill('0');
  await weights.getByLabel('version 2').press('Enter');
  await waitFor('the weights to be applied', async () => {
    const text = await weights.locator('.result').textContent();
    return { ok: /Applied at registry revision \d+/.test(text), text };
  });
  const traffic = await apiGet('/v1/models/mlp/traffic');
  check(traffic.weights['1'] === 100 && traffic.weights['2'] === 0, `the registry's weights: ${JSON.stringify(traffic.weights)}`);
  log(`the registry has the page's weights: ${JSON.stringify(traffic.weights)}`);
  await waitFor('the page to show the new effective share', async () => {
    const text = await weights.locator('.row[data-version="1"] .share-label').textContent();
    return { ok: text.includes('effective 100%'), text };
  });

  // ...and the split moves under traffic: version 1 now takes the requests.
  await new Promise((resolve) => setTimeout(resolve, 1000));
  const before = await experimentCounts();
  await new Promise((resolve) => setTimeout(resolve, 3000));
  const after = await experimentCounts();
  const served1 = after['1'] - before['1'];
  const served2 = after['2'] - before['2'];
  check(served1 > 20 && served2 === 0, `after the change version 1 served ${served1} and version 2 ${served2}`);
  await waitFor('the chart to show version 1 serving', async () => {
    const latest = JSON.parse((await rateChart.getAttribute('data-latest')) || '{}');
    return { ok: (latest.v1 || 0) > 0 && latest.v2 === 0, latest };
  });
  log(`the split moved: version 1 served ${served1} requests in 3 s, version 2 ${served2}`);

  // The audit log shows the change, newest first, without a reload.
  await waitFor('the traffic change at the top of the events', async () => {
    const top = await page.locator('#events-rows tr').first().locator('td').nth(2).textContent();
    return { ok: top.startsWith('traffic'), top };
  });

  // A version that does not fit waits pending, and the page shows why.
  const registered = await apiPost('/v1/models/mlp/versions', {
    version: '3', runtime: 'onnx', artifact: process.env.MLP_ARTIFACT, config: { memory: '64GiB' },
  });
  check(registered.version.state === 'pending', `registered as ${registered.version.state}`);
  const pending = mlpModels.locator('tr[data-version="3"]');
  const shown = await waitFor('the pending version and its reason', async () => {
    if (!(await pending.count())) return { ok: false };
    const state = await pending.locator('td').nth(0).textContent();
    const reason = await pending.locator('td.reason').textContent();
    return { ok: state === 'pending' && reason === registered.version.state_reason && reason.length > 0, state, reason };
  });
  log(`pending version shown with its reason: ${shown.reason}`);

  // No rollout yet: the panel says so. Then one starts, and the page follows it.
  const rollouts = await page.locator('#rollouts-body').textContent();
  check(rollouts.includes('No rollout is running'), `rollouts panel: ${rollouts}`);
  // The page's hand controls are under test, not the gates: the TorchScript target's p99 on a
  // loaded CI machine must not roll the rollout back before the page pauses it (it did, twice).
  const started = await apiPost('/v1/models/mlp/rollouts', {
    target: '2', baseline: '1', steps: [50, 100], hold: '120s',
    gates: { min_requests: 20, max_p99_ratio: 1000 },
  });
  const card = page.locator(`#rollouts-body .rollout[data-rollout="${started.rollout.id}"]`);
  await waitFor('the rollout running in the page', async () => {
    const state = await card.getAttribute('data-state').catch(() => null);
    const now = state === 'running' ? await card.locator('tr.current td').nth(3).textContent() : null;
    return { ok: state === 'running' && Number(now) > 0, state, now };
  });
  log('the rollout runs in the page, with its current stage\'s figures');

  // Resources: the CPU's bar and every version's replicas.
  const device = page.locator('#devices-body [data-device="cpu"] .bar');
  const label = await device.getAttribute('aria-label');
  check(/reserved .*measured .*budget 1\.0 GiB/.test(label), `the CPU's bar: ${label}`);
  const placed = await page.locator('#placements-body tr[data-model="mlp"]').count();
  check(placed >= 2, `mlp's versions in the resources table: ${placed}`);
  // The pool's figures per device, and residence per version: both of mlp's versions hold a
  // replica, and the page has sent mlp requests, all served without waiting for a load.
  const pool = page.locator('#devices-body [data-device="cpu"] .pool');
  const resident = await pool.locator('[data-figure="resident"]').textContent();
  check(/^[2-9]\d* resident$/.test(resident), `resident versions on the CPU: ${resident}`);
  await waitFor('the CPU\'s hit rate over the requests sent', async () => {
    const hitRate = await pool.locator('[data-figure="hit-rate"]').textContent();
    return { ok: /^hit rate 100\.0% of [1-9]\d* requests$/.test(hitRate), hitRate };
  });
  const residence = await page.locator('#placements-body tr[data-model="mlp"][data-version="1"] td[data-resident]').textContent();
  check(residence === 'yes', `mlp 1 is resident: ${residence}`);

  if (screenshots) {
    mkdirSync(screenshots, { recursive: true });
    await page.waitForTimeout(2500);
    for (const panel of ['models', 'traffic', 'figures', 'rollouts', 'resources', 'events']) {
      await page.locator(`#${panel}`).screenshot({ path: `${screenshots}/${panel}.png` });
    }
    await page.screenshot({ path: `${screenshots}/dashboard-1280.png`, fullPage: true });
    log(`screenshots in ${screenshots}`);
  }

  // Paused and aborted from the page: the registry follows, and the baseline has it all back.
  await card.getByRole('button', { name: 'Pause the rollout of mlp' }).click();
  await waitFor('the pause in the registry', async () => {
    const latest = await apiGet('/v1/models/mlp/rollouts/latest');
    return { ok: latest.state === 'paused', state: latest.state };
  });
  await waitFor('the page to show the pause', async () => {
    const state = await card.getAttribute('data-state');
    return { ok: state === 'paused', state };
  });
  check(await card.getByRole('button', { name: 'Resume the rollout of mlp' }).isEnabled(), 'resume is offered');
  await card.getByRole('button', { name: 'Abort the rollout of mlp' }).click();
  await waitFor('the abort in the registry', async () => {
    const latest = await apiGet('/v1/models/mlp/rollouts/latest');
    return { ok: latest.state === 'aborted', state: latest.state, reason: latest.reason };
  });
  const afterAbort = await apiGet('/v1/models/mlp/traffic');
  check(JSON.stringify(afterAbort.weights) === '{"1":100}', `after the abort: ${JSON.stringify(afterAbort.weights)}`);
  await waitFor('the page to show the abort and no rollout running', async () => {
    const state = await card.getAttribute('data-state');
    const text = await page.locator('#rollouts-body').textContent();
    return { ok: state === 'aborted' && text.includes('No rollout is running') && text.includes('aborted by token:'), state };
  });
  log('the rollout was paused, then aborted, from the page');

  // At phone width nothing runs off the side, and the charts fit.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(2500);
  const widths = await page.evaluate(() => ({
    page: document.documentElement.scrollWidth,
    widest: Math.max(...[...document.querySelectorAll('.uplot')].map((u) => u.getBoundingClientRect().right)),
  }));
  check(widths.page <= 390 && widths.widest <= 390, `at 390 px wide: ${JSON.stringify(widths)}`);
  if (screenshots) await page.screenshot({ path: `${screenshots}/dashboard-phone.png`, fullPage: true });
  log(`phone width fits: ${JSON.stringify(widths)}`);

  check(problems.length === 0, `the page reported problems: ${problems.join('; ')}`);
  check(load.failed === 0, `${load.failed} of ${load.sent} inference calls failed`);
  log(`${load.sent} inference calls under the page, none failed`);

  // Keys, once the keyless load has stopped (the first key closes the API to callers without
  // one): made, rotated and revoked from the page, each in force on the inference port.
  load.stop = true;
  await Promise.all(workers);
  const inferWith = async (key) => {
    const headers = { 'Content-Type': 'application/json' };
    if (key) headers.Authorization = `Bearer ${key}`;
    const response = await fetch(`${http}/v2/models/mlp/infer`, { method: 'POST', headers, body: inference });
    await response.arrayBuffer();
    return response.status;
  };
  // Captured, to a sink nothing listens on: the events are counted for the key and the sink.
  const deadSink = 'http://127.0.0.1:9/events';
  await apiPost('/v1/models/mlp/capture', { sample: 1, sinks: [{ http: deadSink }] }, 'PUT');
  const form = page.locator('#new-key');
  await form.locator('#key-name').fill('team-web');
  await form.locator('#key-models').fill('mlp');
  await form.locator('#key-rps').fill('50');
  await form.locator('#key-priority').fill('2');
  await form.getByRole('button', { name: 'Create key' }).click();
  const secretShown = page.locator('#key-secret code[data-secret]');
  const made = await waitFor('the new key\'s secret', async () => {
    const text = (await secretShown.count()) ? await secretShown.textContent() : '';
    return { ok: /^sy_[0-9a-f]{40}$/.test(text), text };
  });
  check(await inferWith(made.text) === 200, 'the new key calls mlp');
  check(await inferWith(null) === 401, 'a caller without a key is refused once a key exists');
  const row = page.locator('#keys-body tr[data-name="team-web"]');
  await waitFor('the key\'s row with its request', async () => {
    const succeeded = (await row.count()) ? await row.locator('[data-figure="succeeded"]').textContent() : null;
    return { ok: Number(succeeded) >= 1, succeeded };
  });
  check(!(await page.locator('#keys-body').textContent()).includes(made.text), 'the list never shows the secret');
  await waitFor('the key\'s captured request', async () => {
    await inferWith(made.text);
    const captured = await row.locator('[data-figure="captured"]').textContent();
    return { ok: Number(captured) >= 1, captured };
  });
  const sinkRow = page.locator(`#capture-body tr[data-model="mlp"][data-sink="${deadSink}"]`);
  await waitFor('the dead sink\'s failures', async () => {
    const failed = (await sinkRow.count()) ? await sinkRow.locator('[data-figure="failed"]').textContent() : null;
    return { ok: Number(failed) >= 1, failed };
  });
  log('the key\'s captured requests and the sink\'s failures show');
  await row.getByRole('button', { name: 'Rotate' }).click();
  const second = await waitFor('the rotated secret', async () => {
    const text = await secretShown.textContent().catch(() => '');
    return { ok: /^sy_[0-9a-f]{40}$/.test(text) && text !== made.text, text };
  });
  await waitFor('the old secret refused', async () => ({ ok: await inferWith(made.text) === 401 }));
  check(await inferWith(second.text) === 200, 'the rotated secret calls mlp');
  page.once('dialog', (dialog) => dialog.accept());
  await row.getByRole('button', { name: 'Revoke' }).click();
  await waitFor('the key revoked in the page', async () => ({ ok: (await row.getAttribute('data-state')) === 'revoked' }));
  await waitFor('the revoked key refused', async () => ({ ok: await inferWith(second.text) === 401 }));
  if (screenshots) await page.locator('#keys').screenshot({ path: `${screenshots}/keys.png` });
  log('a key made, rotated and revoked from the page, each in force at once');
  check(problems.length === 0, `the page reported problems: ${problems.join('; ')}`);
  log('done');
} finally {
  load.stop = true;
  await Promise.all(workers);
  await browser.close();
}
