// Finds the knee: mlp at a series of constant arrival rates, one after another, then a table of
// what each rate achieved. The knee is the first rate the gateway no longer keeps up with
// (achieved below target, dropped iterations, or a jump in p99). RATES (comma-separated) and
// STEP (seconds per rate) can be set with -e.
import { check } from 'k6';
import { inferMlp } from './lib.js';

const rates = (__ENV.RATES || '250,500,1000,2000,3000,4000,6000,8000').split(',').map(Number);
const step = Number(__ENV.STEP || 5);

const scenarios = {};
const thresholds = {};
rates.forEach((rate, index) => {
  const name = `rate_${rate}`;
  scenarios[name] = {
    executor: 'constant-arrival-rate',
    rate,
    timeUnit: '1s',
    duration: `${step}s`,
    startTime: `${index * step}s`,
    preAllocatedVUs: 64,
    maxVUs: 256,
    gracefulStop: '1s',
  };
  // Listed so that the summary keeps a submetric per rate; loose on purpose.
  thresholds[`http_req_duration{scenario:${name}}`] = ['p(99)<60000'];
  thresholds[`iterations{scenario:${name}}`] = ['count>=0'];
  thresholds[`dropped_iterations{scenario:${name}}`] = ['count>=0'];
});

export const options = {
  scenarios,
  thresholds,
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'],
};

export default function () {
  check(inferMlp(), { 'infer is 200': (r) => r.status === 200 });
}

export function handleSummary(data) {
  const lines = ['target req/s | achieved req/s | dropped | p50 ms | p99 ms'];
  let knee = null;
  for (const rate of rates) {
    const name = `rate_${rate}`;
    const duration = data.metrics[`http_req_duration{scenario:${name}}`];
    const done = data.metrics[`iterations{scenario:${name}}`];
    const dropped = data.metrics[`dropped_iterations{scenario:${name}}`];
    const achieved = done ? done.values.count / step : 0;
    const droppedCount = dropped ? dropped.values.count : 0;
    const p50 = duration ? duration.values.med : NaN;
    const p99 = duration ? duration.values['p(99)'] : NaN;
    lines.push(`${rate} | ${achieved.toFixed(0)} | ${droppedCount} | ${p50.toFixed(2)} | ${p99.toFixed(2)}`);
    if (knee === null && (achieved < rate * 0.95 || droppedCount > rate * step * 0.01)) {
      knee = rate;
    }
  }
  lines.push(knee === null ? 'no knee below the highest rate tried' : `knee: ${knee} req/s`);
  return { stdout: lines.join('\n') + '\n' };
}
