// Switchyard's dashboard: reads the management API of the gateway that serves it, every two
// seconds, and renders each panel. Every text from the API goes in as text, never as markup.
'use strict';

(() => {
  const POLL_MS = 2000;
  const EVENTS_KEPT = 300;
  const TOKEN_KEY = 'switchyard.admin-token';
  const COLORS = ['#1f5fbf', '#d9480f', '#2b8a3e', '#862e9c', '#c92a2a', '#0b7285', '#5c940d', '#e67700'];

  const $ = (id) => document.getElementById(id);
  const charts = new Map(); // "model/kind" -> { plot, labels }
  const dirtyWeights = new Set(); // models whose weight form the operator is editing
  let token = sessionStorage.getItem(TOKEN_KEY) || '';
  let eventsAfter = null;
  const events = [];
  let timer = null;

  // ---------------------------------------------------------------- the API

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(path, { method = 'GET', body } = {}) {
    const headers = { Accept: 'application/json' };
    if (token) headers.Authorization = `Bearer ${token}`;
    if (method !== 'GET') headers['Content-Type'] = 'application/json';
    const response = await fetch(path, {
      method, headers, body: body === undefined ? (method === 'GET' ? undefined : '{}') : JSON.stringify(body),
      credentials: 'omit', cache: 'no-store',
    });
    let value = null;
    try { value = await response.json(); } catch { /* an empty or non-JSON body */ }
    if (!response.ok) {
      throw new ApiError(response.status, (value && value.error) || `${method} ${path}: HTTP ${response.status}`);
    }
    return value;
  }

  const enc = encodeURIComponent;

  // ---------------------------------------------------------------- building blocks

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'class') node.className = value;
      else if (key === 'text') node.textContent = value;
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function bytes(n) {
    if (n === null || n === undefined) return '—';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let value = Number(n);
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
    return `${value >= 100 || unit === 0 ? value.toFixed(0) : value.toFixed(1)} ${units[unit]}`;
  }

  function number(value, digits = 1) {
    if (value === null || value === undefined || Number.isNaN(value)) return '—';
    return Number(value).toFixed(digits);
  }

  function stateBadge(state) {
    return el('span', { class: `state state-${state || 'none'}`, text: state || '—' });
  }

  function table(caption, headings, rows) {
    return el('div', { class: 'scroll' },
      el('table', {},
        caption ? el('caption', { text: caption }) : null,
        el('thead', {}, el('tr', {}, headings.map((h) => el('th', { scope: 'col', class: h.num ? 'num' : null, text: h.text || h })))),
        el('tbody', {}, rows)));
  }

  function replace(container, ...children) {
    container.replaceChildren(...children.flat().filter(Boolean));
  }

  // ---------------------------------------------------------------- panels

  function renderModels(snapshot, resources, experiments) {
    const placements = new Map(resources.versions.map((v) => [`${v.model}/${v.version}`, v]));
    const sections = snapshot.models.map((model) => {
      const name = model.model.name;
      const experiment = experiments.get(name);
      const serving = new Map((experiment ? experiment.versions : []).map((v) => [v.version, v]));
      const weights = model.traffic || {};
      const total = Object.values(weights).reduce((a, b) => a + b, 0);
      const rows = model.versions.filter((v) => v.state !== 'retired').map((version) => {
        const label = version.label;
        const placement = placements.get(`${name}/${label}`);
        const measured = (version.metadata && version.metadata.measured_memory) || {};
        const replicas = placement ? placement.replicas : [];
        const devices = [...new Set(replicas.map((r) => r.device))];
        const scores = Object.entries((model.latest_scores || {})[label] || {})
          .map(([metric, value]) => `${metric}=${typeof value === 'number' ? value.toFixed(3) : value}`);
        const live = serving.get(label);
        return el('tr', { 'data-version': label },
          el('th', { scope: 'row', text: label }),
          el('td', {}, stateBadge(version.state)),
          el('td', {}, stateBadge(live ? live.state : null)),
          el('td', { text: version.runtime }),
          el('td', { text: devices.length ? devices.join(', ') : (measured.device || '—') }),
          el('td', { class: 'num', text: replicas.length || '—' }),
          el('td', { class: 'num', text: placement && placement.reserved_bytes ? bytes(placement.reserved_bytes) : '—' }),
          el('td', { class: 'num', text: measured.bytes_per_replica !== undefined ? bytes(measured.bytes_per_replica) : (measured.bytes !== undefined ? bytes(measured.bytes) : '—') }),
          el('td', { class: 'num', text: total > 0 && weights[label] !== undefined ? `${((weights[label] * 100) / total).toFixed(0)}%` : '—' }),
          el('td', { text: scores.length ? scores.join(' ') : '—' }),
          el('td', { class: 'reason', text: version.state_reason || '' }));
      });
      return el('div', { class: 'model', 'data-model': name },
        table(`${name}${model.model.description ? ` — ${model.model.description}` : ''}`,
          ['Version', 'Registry', 'Serving', 'Runtime', 'Device', { text: 'Replicas', num: true },
            { text: 'Reserved', num: true }, { text: 'Measured', num: true }, { text: 'Weight', num: true },
            'Scores', 'Reason'],
          rows.length ? rows : [el('tr', {}, el('td', { colspan: 11, class: 'empty', text: 'No versions.' }))]));
    });
    replace($('models-body'), sections.length ? sections : [el('p', { class: 'empty', text: 'No models in the registry.' })]);
  }

  function policyText(policy) {
    if (!policy) return 'weighted';
    const parts = [policy.mode || 'weighted'];
    if (policy.header) parts.push(`on the ${policy.header} header`);
    if (policy.metric) parts.push(`by ${policy.metric}`);
    if (policy.metrics) parts.push(`by ${Object.entries(policy.metrics).map(([m, w]) => `${w} × ${m}`).join(' + ')}`);
    if (policy.utilisation !== undefined) parts.push(`within ${policy.utilisation * 100}% of each version's capacity`);
    if (policy.shadow) parts.push(`shadowing ${policy.shadow.fraction * 100}% to version ${policy.shadow.version}`);
    if (policy.max_error_rate !== undefined) parts.push(`versions above ${policy.max_error_rate * 100}% errors shed`);
    return parts.join(', ');
  }

  function renderTraffic(snapshot, experiments) {
    const container = $('traffic-body');
    const present = new Set();
    for (const model of snapshot.models) {
      const name = model.model.name;
      present.add(name);
      let form = container.querySelector(`form[data-model="${CSS.escape(name)}"]`);
      if (form && dirtyWeights.has(name)) {
        updateShares(form, model, experiments.get(name));
        continue;
      }
      const fresh = weightsForm(model, experiments.get(name));
      if (form) {
        // Keep the result of the last apply on screen across refreshes.
        fresh.querySelector('.result').textContent = form.querySelector('.result').textContent;
        form.replaceWith(fresh);
      } else {
        container.append(fresh);
      }
      form = fresh;
      updateShares(form, model, experiments.get(name));
    }
    for (const form of container.querySelectorAll('form[data-model]')) {
      if (!present.has(form.dataset.model)) form.remove();
    }
    if (!snapshot.models.length) replace(container, el('p', { class: 'empty', text: 'No models.' }));
  }

  function weightsForm(model, experiment) {
    const name = model.model.name;
    const weights = model.traffic || {};
    const versions = model.versions.filter((v) => v.state !== 'retired' && v.state !== 'failed');
    const rows = versions.map((version) => {
      const id = `weight-${name}-${version.label}`.replace(/[^A-Za-z0-9_-]/g, '_');
      return el('div', { class: 'row', 'data-version': version.label },
        el('label', { for: id, text: `version ${version.label}` }),
        el('input', {
          id, type: 'number', min: 0, max: 1000000, step: 1, inputmode: 'numeric',
          value: weights[version.label] ?? 0, name: version.label,
          'aria-describedby': `${id}-share`,
          oninput: () => dirtyWeights.add(name),
        }),
        el('div', { id: `${id}-share` },
          el('div', { class: 'share', 'aria-hidden': 'true' }, el('span', { class: 'configured' })),
          el('div', { class: 'share-label' })));
    });
    const form = el('form', { class: 'weights', 'data-model': name, 'aria-label': `Traffic weights of ${name}` },
      el('h3', { text: name }),
      el('p', { class: 'status-line policy', text: `Routing policy: ${policyText(model.policy)}` }),
      rows,
      el('div', { class: 'actions' },
        el('button', { type: 'submit', text: 'Apply weights' }),
        el('button', {
          type: 'button', class: 'secondary', text: 'Reset',
          onclick: () => { dirtyWeights.delete(name); refresh(); },
        }),
        el('span', { class: 'status-line result', role: 'status', 'aria-live': 'polite' })));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      applyWeights(form, name);
    });
    return form;
  }

  function updateShares(form, model, experiment) {
    const weights = model.traffic || {};
    const total = Object.values(weights).reduce((a, b) => a + b, 0);
    const effective = new Map((experiment ? experiment.versions : []).map((v) => [v.version, v.effective_weight]));
    for (const row of form.querySelectorAll('.row[data-version]')) {
      const label = row.dataset.version;
      const share = total > 0 ? (weights[label] || 0) / total : 0;
      row.querySelector('.share > span').style.width = `${(share * 100).toFixed(1)}%`;
      const now = effective.get(label);
      row.querySelector('.share-label').textContent = total > 0
        ? `configured ${(share * 100).toFixed(0)}% · effective ${now === undefined ? '—' : `${(now * 100).toFixed(0)}%`}`
        : 'no weights set: the highest ready version serves';
    }
  }

  async function applyWeights(form, name) {
    const weights = {};
    for (const input of form.querySelectorAll('input[type=number]')) {
      const value = Number(input.value);
      if (!Number.isInteger(value) || value < 0) {
        form.querySelector('.result').textContent = `The weight of version ${input.name} must be a whole number, 0 or more.`;
        input.focus();
        return;
      }
      weights[input.name] = value;
    }
    const button = form.querySelector('button[type=submit]');
    button.disabled = true;
    try {
      const answer = await api(`/v1/models/${enc(name)}/traffic`, { method: 'PUT', body: { weights } });
      dirtyWeights.delete(name);
      form.querySelector('.result').textContent = `Applied at registry revision ${answer.revision}.`;
      await refresh();
    } catch (error) {
      form.querySelector('.result').textContent = `Not applied: ${error.message}`;
    } finally {
      button.disabled = false;
    }
  }

  // Charts: one row per model, three charts each (requests/s, error rate, latency).
  const CHART_KINDS = [
    { kind: 'rate', title: 'Requests per second', fields: [['requests_per_s', '']], unit: '/s', digits: 1 },
    { kind: 'errors', title: 'Error rate (%)', fields: [['error_rate', '']], scale: 100, unit: '%', digits: 1 },
    { kind: 'latency', title: 'Latency p50 / p99 (ms)', fields: [['p50_ms', ' p50'], ['p99_ms', ' p99']], unit: ' ms', digits: 2 },
  ];

  function renderFigures(figuresByModel) {
    const container = $('figures-body');
    const seen = new Set();
    for (const [name, figures] of figuresByModel) {
      seen.add(name);
      let block = container.querySelector(`div.model-figures[data-model="${CSS.escape(name)}"]`);
      if (!block) {
        block = el('div', { class: 'model-figures', 'data-model': name },
          el('h3', { text: name }),
          el('div', { class: 'charts' }, CHART_KINDS.map((c) =>
            el('figure', { class: 'chart', 'data-kind': c.kind, role: 'group', 'aria-label': `${name}: ${c.title}` },
              el('h4', { text: c.title }),
              el('div', { class: 'plot' }),
              el('p', { class: 'latest', 'aria-live': 'off' })))));
        container.append(block);
      }
      const labels = Object.keys(figures.versions);
      for (const c of CHART_KINDS) {
        const figure = block.querySelector(`figure[data-kind="${c.kind}"]`);
        drawChart(`${name}/${c.kind}`, figure, c, figures, labels);
      }
    }
    for (const block of container.querySelectorAll('div.model-figures')) {
      if (!seen.has(block.dataset.model)) {
        for (const c of CHART_KINDS) {
          const key = `${block.dataset.model}/${c.kind}`;
          if (charts.has(key)) { charts.get(key).plot.destroy(); charts.delete(key); }
        }
        block.remove();
      }
    }
    if (!figuresByModel.size) replace(container, el('p', { class: 'empty', text: 'No models.' }));
  }

  function drawChart(key, figure, kind, figures, labels) {
    const target = figure.querySelector('.plot');
    const scale = kind.scale || 1;
    const series = [];
    const data = [figures.times];
    labels.forEach((label) => {
      for (const [field, suffix] of kind.fields) {
        data.push(figures.versions[label][field].map((v) => (v === null ? null : v * scale)));
        series.push({ label: `v${label}${suffix}`, field, version: label });
      }
    });
    const signature = series.map((s) => s.label).join('|');
    let chart = charts.get(key);
    if (chart && chart.signature !== signature) {
      chart.plot.destroy();
      charts.delete(key);
      chart = null;
    }
    const width = Math.max(220, Math.floor(target.clientWidth || figure.clientWidth || 300));
    if (!chart) {
      const options = {
        width, height: 170,
        scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max || 0, 1) * 1.1] } },
        axes: [{ space: 60 }, { size: 48 }],
        legend: { show: true, live: false },
        cursor: { points: { show: false } },
        series: [{}].concat(series.map((s) => {
          const color = COLORS[labels.indexOf(s.version) % COLORS.length];
          return { label: s.label, stroke: color, width: 1.5, dash: s.field === 'p99_ms' ? [5, 4] : undefined, spanGaps: false, points: { show: false } };
        })),
      };
      target.replaceChildren();
      chart = { plot: new uPlot(options, data, target), signature };
      charts.set(key, chart);
    } else {
      chart.plot.setData(data);
      if (Math.abs(chart.plot.width - width) > 4) chart.plot.setSize({ width, height: 170 });
    }
    figure.dataset.points = String(figures.times.length);
    const values = {};
    const latest = series.map((s, i) => {
      const column = data[i + 1];
      let value = null;
      for (let j = column.length - 1; j >= 0 && value === null; j -= 1) value = column[j];
      values[s.label] = value;
      return `${s.label}: ${value === null ? '—' : `${number(value, kind.digits)}${kind.unit}`}`;
    });
    // The latest point of each series, for scripts and tests reading the page.
    figure.dataset.latest = JSON.stringify(values);
    figure.querySelector('.latest').textContent = latest.length ? `Latest — ${latest.join(' · ')}` : 'No traffic yet.';
  }

  function renderResources(resources) {
    const devices = resources.devices.map((device) => {
      const scale = device.budget || device.total || Math.max(device.reserved || 0, device.measured || 0, 1) * 1.25;
      const pct = (n) => `${Math.min(100, ((n || 0) * 100) / scale).toFixed(1)}%`;
      const limit = device.budget ? `budget ${bytes(device.budget)}` : (device.total ? `total ${bytes(device.total)} (no budget)` : 'no budget');
      const summary = `${device.id}: reserved ${bytes(device.reserved)}, measured ${bytes(device.measured)}, ${limit}${device.free !== null && device.free !== undefined ? `, free ${bytes(device.free)}` : ''}`;
      const reserved = el('span', { class: 'reserved' });
      reserved.style.width = pct(device.reserved);
      const measured = el('span', { class: 'measured' });
      measured.style.width = pct(device.measured);
      return el('div', { class: 'device', 'data-device': device.id },
        el('h3', { text: device.id }),
        el('div', { class: 'bar', role: 'img', 'aria-label': summary }, reserved, measured),
        el('div', { class: 'legend' },
          el('span', {}, el('span', { class: 'swatch reserved' }), `reserved ${bytes(device.reserved)}`),
          el('span', {}, el('span', { class: 'swatch measured' }), `measured ${bytes(device.measured)}`),
          el('span', { text: limit }),
          device.free !== null && device.free !== undefined ? el('span', { text: `free ${bytes(device.free)}` }) : null),
        el('p', { class: 'pool' },
          el('span', { 'data-figure': 'resident', text: `${device.resident_versions} resident` }),
          el('span', { 'data-figure': 'evictable', text: `evictable ${bytes(device.evictable)}` }),
          el('span', { 'data-figure': 'loads', text: `${device.loads} loads${device.load_failures ? ` (${device.load_failures} failed)` : ''}` }),
          el('span', { 'data-figure': 'evictions', text: `${device.evictions} evictions` }),
          el('span', { 'data-figure': 'hit-rate', text: `hit rate ${device.hit_rate === null || device.hit_rate === undefined ? '—' : `${(device.hit_rate * 100).toFixed(1)}%`} of ${device.requests} requests` })));
    });
    replace($('devices-body'), devices.length ? devices : [el('p', { class: 'empty', text: 'No devices.' })]);
    const rows = resources.versions.map((v) => {
      const devicesUsed = [...new Set(v.replicas.map((r) => r.device))].join(', ');
      const scaler = v.autoscaler || {};
      // A ready version holding no replica is registered and loads on its next request: not
      // resident, which is not a failure.
      const residence = v.resident ? (v.pinned ? 'pinned' : 'yes') : (v.load_failure ? `no: ${v.load_failure}` : 'no (loads on demand)');
      return el('tr', { 'data-model': v.model, 'data-version': v.version },
        el('th', { scope: 'row', text: `${v.model}/${v.version}` }),
        el('td', {}, stateBadge(v.state)),
        el('td', { 'data-resident': String(v.resident), text: residence }),
        el('td', { class: 'num', text: v.replicas.length }),
        el('td', { text: devicesUsed || '—' }),
        el('td', { class: 'num', text: bytes(v.reserved_bytes) }),
        el('td', { class: 'num', text: scaler.target ?? '—' }),
        el('td', { text: scaler.reason || '—' }));
    });
    const changes = resources.recent.slice(0, 10).map((c) => el('tr', { 'data-action': c.action },
      el('td', { text: new Date(c.at_ms).toLocaleTimeString() }),
      el('td', { text: c.action.replace('_', ' ') }),
      el('th', { scope: 'row', text: `${c.model}/${c.version}` }),
      el('td', { text: c.device }),
      el('td', { class: 'num', text: bytes(c.bytes) }),
      el('td', { text: c.reason })));
    replace($('placements-body'),
      table('Replicas and the autoscaler',
        ['Version', 'State', 'Resident', { text: 'Replicas', num: true }, 'Devices', { text: 'Reserved', num: true }, { text: 'Target', num: true }, 'Why'],
        rows.length ? rows : [el('tr', {}, el('td', { colspan: 8, class: 'empty', text: 'Nothing placed.' }))]),
      table('Recent loads and evictions, newest first',
        ['Time', 'What', 'Version', 'Device', { text: 'Bytes', num: true }, 'Why'],
        changes.length ? changes : [el('tr', {}, el('td', { colspan: 6, class: 'empty', text: 'None since start.' }))]));
  }

  // Keys: each with its limits and its name's figures here; create, rotate and revoke.
  function renderKeys(list) {
    const rows = list.keys.map((k) => {
      const limits = k.spec.limits || {};
      const rate = (r, b) => (r ? `${r}/s${b ? ` + ${b}` : ''}` : '—');
      const f = k.figures;
      const refused = Object.values(f.refused || {}).reduce((a, b) => a + b, 0);
      const live = !k.revoked_ms;
      const actions = live ? el('td', {},
        el('button', { type: 'button', 'data-action': 'rotate', onclick: () => keyAction(k, 'rotate') }, 'Rotate'),
        el('button', { type: 'button', 'data-action': 'revoke', onclick: () => keyAction(k, 'revoke') }, 'Revoke'))
        : el('td', { text: 'revoked' });
      return el('tr', { 'data-key': k.id, 'data-name': k.name, 'data-state': live ? 'live' : 'revoked' },
        el('th', { scope: 'row', text: k.name }),
        el('td', { text: k.id }),
        el('td', { text: `${k.prefix}…` }),
        el('td', { text: (k.spec.models || []).join(', ') || 'all' }),
        el('td', { text: rate(limits.requests_per_s, limits.requests_burst) }),
        el('td', { text: rate(limits.rows_per_s, limits.rows_burst) }),
        el('td', { class: 'num', text: limits.in_flight ?? '—' }),
        el('td', { class: 'num', text: k.spec.priority ?? '—' }),
        el('td', { class: 'num', 'data-figure': 'succeeded', text: f.succeeded }),
        el('td', { class: 'num', 'data-figure': 'failed', text: f.failed }),
        el('td', { class: 'num', 'data-figure': 'refused', text: refused }),
        el('td', { class: 'num', text: f.p99_ms === null || f.p99_ms === undefined ? '—' : number(f.p99_ms, 1) }),
        el('td', { class: 'num', 'data-figure': 'captured', text: (f.capture || {}).captured ?? 0 }),
        actions);
    });
    replace($('keys-body'), table(null,
      ['Name', 'Id', 'Secret', 'Models', 'Requests', 'Rows', { text: 'In flight', num: true }, { text: 'Priority', num: true },
        { text: 'Succeeded', num: true }, { text: 'Failed', num: true }, { text: 'Refused', num: true }, { text: 'p99 ms', num: true },
        { text: 'Captured', num: true }, ''],
      rows.length ? rows : [el('tr', {}, el('td', { colspan: 14, class: 'empty', text: 'No keys: the inference API takes any caller unless the configuration names a key.' }))]));
  }

  // Payload capture: each captured model's sinks, with what each wrote, dropped or failed here.
  function renderCapture(list) {
    const rows = list.captures.flatMap((c) => c.sinks.map((s) => {
      const place = s.sink.file !== undefined ? `file: ${s.sink.file}` : s.sink.http;
      return el('tr', { 'data-model': c.model, 'data-sink': place },
        el('th', { scope: 'row', text: c.model }),
        el('td', { class: 'num', text: number(c.spec.sample * 100, 2) }),
        el('td', { class: 'num', 'data-figure': 'captured', text: c.captured }),
        el('td', { class: 'num', 'data-figure': 'dropped', text: c.dropped }),
        el('td', { text: place }),
        el('td', { class: 'num', 'data-figure': 'written', text: s.written }),
        el('td', { class: 'num', 'data-figure': 'sink-dropped', text: s.dropped }),
        el('td', { class: 'num', 'data-figure': 'failed', text: s.failed }),
        el('td', { text: s.error || '—' }));
    }));
    replace($('capture-body'), table(null,
      ['Model', { text: 'Sample %', num: true }, { text: 'Captured', num: true }, { text: 'Dropped', num: true }, 'Sink',
        { text: 'Written', num: true }, { text: 'Sink dropped', num: true }, { text: 'Failed', num: true }, 'Problem'],
      rows.length ? rows : [el('tr', {}, el('td', { colspan: 9, class: 'empty', text: 'No model is captured (PUT /v1/models/{m}/capture, or switchyard capture set).' }))]));
  }

  function showSecret(answer, what) {
    const out = $('key-secret');
    replace(out, `${what} ${answer.name} (${answer.id}). Its secret, shown this once: `,
      el('code', { 'data-secret': '', text: answer.key }),
      (answer.warnings || []).length ? ` Warnings: ${answer.warnings.join('; ')}` : '');
  }

  async function keyAction(key, action) {
    const out = $('key-secret');
    try {
      if (action === 'revoke') {
        if (!window.confirm(`Revoke ${key.name} (${key.id})? Every gateway refuses it within a second.`)) return;
        await api(`/v1/keys/${enc(key.id)}`, { method: 'DELETE' });
        replace(out, `Revoked ${key.name} (${key.id}).`);
      } else {
        showSecret(await api(`/v1/keys/${enc(key.id)}/rotate`, { method: 'POST' }), 'Rotated');
      }
    } catch (error) {
      replace(out, `${action} refused: ${error.message}`);
    }
    await refresh();
  }

  async function createKey(form) {
    const value = (name) => form.elements[name].value.trim();
    const numberOf = (name) => (value(name) === '' ? undefined : Number(value(name)));
    const limits = {};
    if (numberOf('rps') !== undefined) limits.requests_per_s = numberOf('rps');
    if (numberOf('burst') !== undefined) limits.requests_burst = numberOf('burst');
    if (numberOf('in_flight') !== undefined) limits.in_flight = numberOf('in_flight');
    const body = {
      name: value('name'),
      models: value('models').split(',').map((m) => m.trim()).filter(Boolean),
      limits,
    };
    if (numberOf('priority') !== undefined) body.priority = numberOf('priority');
    try {
      showSecret(await api('/v1/keys', { method: 'POST', body }), 'Created');
      form.reset();
    } catch (error) {
      replace($('key-secret'), `Not created: ${error.message}`);
    }
    await refresh();
  }

  // Rollouts: the latest of each model, its stages with their figures, and the hand controls.
  const ACTIVE = new Set(['pending', 'running', 'paused']);

  function pct(value) {
    return value === null || value === undefined ? '—' : `${(value * 100).toFixed(2)}%`;
  }

  function stageSplit(stage) {
    if (stage.kind === 'shadow') return `mirror ${stage.percent}%`;
    const total = Object.values(stage.weights).reduce((a, b) => a + b, 0) || 1;
    return Object.entries(stage.weights).map(([label, w]) => `${label}: ${((w * 100) / total).toFixed(0)}%`).join(' · ');
  }

  function renderRollouts(latest) {
    const cards = [];
    const anyActive = [...latest.values()].some((r) => ACTIVE.has(r.state));
    for (const [name, r] of latest) {
      const rows = r.stages.map((stage, index) => {
        const analysis = r.history.find((a) => a.stage === index);
        const now = !analysis && index === r.current && ACTIVE.has(r.state);
        const figures = analysis ? analysis.figures : (now && r.live ? r.live.figures : null);
        const verdict = analysis ? analysis.verdict : (now ? (r.state === 'paused' ? 'paused' : 'now') : '—');
        return el('tr', { 'data-stage': index, class: now ? 'current' : null },
          el('th', { scope: 'row', text: index + 1 }),
          el('td', { text: stage.kind }),
          el('td', { text: stageSplit(stage) }),
          el('td', { class: 'num', text: `${stage.hold_ms / 1000} s` }),
          el('td', { class: 'num', text: figures ? (stage.kind === 'shadow' ? figures.shadow.mirrored : figures.target.requests) : '—' }),
          el('td', { class: 'num', text: figures ? pct(figures.target.error_rate) : '—' }),
          el('td', { class: 'num', text: figures ? number(figures.target.p99_ms, 2) : '—' }),
          el('td', { class: 'num', text: figures ? pct(figures.baseline.error_rate) : '—' }),
          el('td', { class: 'num', text: figures ? number(figures.baseline.p99_ms, 2) : '—' }),
          el('td', { class: 'num', text: figures && stage.kind === 'shadow' ? pct(figures.shadow.argmax_agreement) : '—' }),
          el('td', {}, stateBadge(verdict)));
      });
      const gates = Object.entries(r.gates).filter(([, v]) => v !== null)
        .map(([k, v]) => `${k} ${typeof v === 'object' ? `${v.metric} ≥ ${v.min}` : v}`).join(' · ');
      const active = ACTIVE.has(r.state);
      const result = el('span', { class: 'status-line result', role: 'status', 'aria-live': 'polite', text: rolloutMessages.get(name) || '' });
      const control = (action, label, enabled) => el('button', {
        type: 'button', class: action === 'abort' ? 'danger' : 'secondary', text: label,
        disabled: !enabled, 'aria-label': `${label} the rollout of ${name}`,
        onclick: () => controlRollout(name, r.id, action, result),
      });
      const status = r.live ? r.live.status : (r.reason || '');
      cards.push(el('div', { class: 'rollout', 'data-model': name, 'data-state': r.state, 'data-rollout': r.id },
        el('h3', {}, `${name}: version ${r.baseline} → ${r.target} `, stateBadge(r.state)),
        el('p', { class: 'status-line', text: `Rollout ${r.id}, stage ${r.current + 1} of ${r.stages.length}, target at ${r.target_percent.toFixed(1)}% of live traffic${r.driven_by_this_gateway ? ', driven by this gateway' : ''}.` }),
        el('p', { class: 'rollout-status', text: status }),
        table(null, ['Stage', 'Kind', 'Split', { text: 'Hold', num: true }, { text: 'Requests', num: true },
          { text: 'Errors', num: true }, { text: 'p99 ms', num: true }, { text: 'Base errors', num: true },
          { text: 'Base p99 ms', num: true }, { text: 'Agreement', num: true }, 'Verdict'], rows),
        el('p', { class: 'hint', text: `Gates: ${gates}` }),
        el('div', { class: 'actions' },
          control('pause', 'Pause', r.state === 'running' || r.state === 'pending'),
          control('resume', 'Resume', r.state === 'paused'),
          control('promote', 'Promote', active),
          control('abort', 'Abort', active),
          result)));
    }
    const note = anyActive ? null : el('p', { class: 'empty', text: 'No rollout is running.' });
    replace($('rollouts-body'), note, cards);
  }

  // The last hand control's outcome per model, kept across the cards' redraws.
  const rolloutMessages = new Map();

  async function controlRollout(name, id, action, result) {
    try {
      const answer = await api(`/v1/models/${enc(name)}/rollouts/${id}/${action}`, { method: 'POST' });
      rolloutMessages.set(name, `${action}: done at registry revision ${answer.revision}; the rollout is ${answer.rollout.state}.`);
    } catch (error) {
      rolloutMessages.set(name, `${action} refused: ${error.message}`);
    }
    result.textContent = rolloutMessages.get(name);
    await refresh();
  }

  async function pollEvents(revision) {
    if (eventsAfter === null) eventsAfter = Math.max(0, revision - 100);
    for (let page = 0; page < 5; page += 1) {
      const answer = await api(`/v1/events?after=${eventsAfter}&limit=200`);
      for (const event of answer.events) events.unshift(event);
      eventsAfter = answer.next_after;
      if (answer.events.length < 200) break;
    }
    events.length = Math.min(events.length, EVENTS_KEPT);
    const body = $('events-rows');
    const shown = body.firstElementChild ? Number(body.firstElementChild.dataset.revision) : -1;
    const fresh = events.filter((e) => e.revision > shown);
    if (!fresh.length && body.childElementCount) return;
    const rows = fresh.map((e) => {
      const at = e.at_ms ?? e.created_ms;
      return el('tr', { 'data-revision': e.revision },
        el('td', { class: 'num', text: e.revision }),
        el('td', { text: at ? new Date(at).toLocaleTimeString() : '—' }),
        el('td', { text: e.action }),
        el('td', { text: e.model || '—' }),
        el('td', { text: e.actor || '—' }),
        el('td', { class: 'details', text: e.payload === undefined ? '' : JSON.stringify(e.payload) }));
    });
    body.prepend(...rows);
    while (body.childElementCount > EVENTS_KEPT) body.lastElementChild.remove();
    if (!body.childElementCount) body.append(el('tr', {}, el('td', { colspan: 6, class: 'empty', text: 'No events yet.' })));
  }

  // ---------------------------------------------------------------- the loop

  async function refresh() {
    const snapshot = await api('/v1/models');
    const names = snapshot.models.map((m) => m.model.name);
    const [resources, keys, captures, experimentList, figureList, rolloutList] = await Promise.all([
      api('/v1/resources'),
      api('/v1/keys'),
      api('/v1/capture'),
      Promise.all(names.map((n) => api(`/v1/models/${enc(n)}/experiment`).catch(() => null))),
      Promise.all(names.map((n) => api(`/v1/models/${enc(n)}/figures`).catch(() => null))),
      Promise.all(names.map((n) => api(`/v1/models/${enc(n)}/rollouts`).catch(() => null))),
    ]);
    const rollouts = new Map();
    names.forEach((n, i) => {
      const listed = rolloutList[i] && rolloutList[i].rollouts;
      if (listed && listed.length) rollouts.set(n, listed[0]);
    });
    const experiments = new Map();
    const figures = new Map();
    names.forEach((n, i) => {
      if (experimentList[i]) experiments.set(n, experimentList[i]);
      if (figureList[i]) figures.set(n, figureList[i]);
    });
    renderModels(snapshot, resources, experiments);
    renderTraffic(snapshot, experiments);
    renderFigures(figures);
    renderResources(resources);
    renderKeys(keys);
    renderCapture(captures);
    renderRollouts(rollouts);
    await pollEvents(snapshot.revision);
    $('revision').textContent = `registry revision ${snapshot.revision}`;
    $('updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.refreshed = String(Date.now());
  }

  async function tick() {
    timer = null;
    try {
      await refresh();
      $('problem').hidden = true;
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) { showLogin('This gateway needs a token.'); return; }
      if (error instanceof ApiError && error.status === 403 && !token) { showLogin(error.message); return; }
      $('problem').textContent = `Cannot read the gateway: ${error.message}. Retrying.`;
      $('problem').hidden = false;
    }
    timer = setTimeout(tick, POLL_MS);
  }

  function showLogin(message) {
    if (timer) { clearTimeout(timer); timer = null; }
    $('main').hidden = true;
    $('login').hidden = false;
    $('forget-token').hidden = true;
    $('login-error').textContent = token ? `That token was refused: ${message}` : message;
    $('token').focus();
  }

  function start() {
    $('login').hidden = true;
    $('main').hidden = false;
    $('forget-token').hidden = !token;
    tick();
  }

  $('new-key').addEventListener('submit', (event) => {
    event.preventDefault();
    createKey(event.target);
  });

  $('login').addEventListener('submit', (event) => {
    event.preventDefault();
    token = $('token').value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    $('token').value = '';
    start();
  });

  $('forget-token').addEventListener('click', () => {
    token = '';
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin('Signed out.');
  });

  let resizeTimer = null;
  window.addEventListener('resize', () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      for (const [, chart] of charts) {
        const width = Math.max(220, Math.floor(chart.plot.root.parentElement.clientWidth));
        chart.plot.setSize({ width, height: 170 });
      }
    }, 150);
  });

  start();
})();
