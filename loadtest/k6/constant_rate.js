// A constant arrival rate of mlp inferences with latency thresholds. RATE (requests/s, default
// 500) and DURATION (default 20s) can be set with -e.
import { check } from 'k6';
import { inferMlp } from './lib.js';

const rate = Number(__ENV.RATE || 500);

export const options = {
  scenarios: {
    steady: {
      executor: 'constant-arrival-rate',
      rate,
      timeUnit: '1s',
      duration: __ENV.DURATION || '20s',
      preAllocatedVUs: 32,
      maxVUs: 128,
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    http_req_duration: ['p(50)<5', 'p(99)<25'],
    dropped_iterations: ['count<' + Math.ceil(rate * 0.01)],
  },
};

export default function () {
  check(inferMlp(), { 'infer is 200': (r) => r.status === 200 });
}
