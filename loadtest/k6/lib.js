// Shared by the k6 scripts: the gateway's address and request bodies.
import http from 'k6/http';

export const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8000';

const X = Array.from({ length: 64 }, (_, i) => (i % 13) / 13);
export const MLP_BODY = JSON.stringify({
  inputs: [{ name: 'x', shape: [1, 64], datatype: 'FP32', data: X }],
});

export function inferMlp(version) {
  const path = version ? `/v2/models/mlp/versions/${version}/infer` : '/v2/models/mlp/infer';
  return http.post(`${BASE_URL}${path}`, MLP_BODY, {
    headers: { 'Content-Type': 'application/json' },
  });
}
