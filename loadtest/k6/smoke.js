// Smoke test: one user, a few requests through every kind of endpoint; any failure fails it.
import http from 'k6/http';
import { check } from 'k6';
import { BASE_URL, inferMlp } from './lib.js';

export const options = {
  vus: 1,
  iterations: 20,
  thresholds: { checks: ['rate==1'], http_req_failed: ['rate==0'] },
};

export default function () {
  check(http.get(`${BASE_URL}/v2/health/ready`), { 'ready is 200': (r) => r.status === 200 });
  check(http.get(`${BASE_URL}/v2/models/mlp`), {
    'metadata names x': (r) => r.json('inputs.0.name') === 'x',
  });
  const response = inferMlp();
  check(response, {
    'infer is 200': (r) => r.status === 200,
    'ten outputs': (r) => r.json('outputs.0.data').length === 10,
    'names its version': (r) => typeof r.json('model_version') === 'string',
  });
}
