//! Feedback on a served request: a reward in [0, 1] for the version that answered it, which a
//! bandit policy learns from. Both the inference port and the management API take it, in the
//! same JSON shape, through this one function.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::core::Gateway;
use crate::error::GatewayError;
use crate::routing::FeedbackError;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Feedback {
    /// The `id` of a response the gateway gave.
    pub request_id: String,
    /// In [0, 1].
    #[schema(minimum = 0, maximum = 1)]
    pub reward: f64,
}

impl Feedback {
    pub fn parse(body: &[u8]) -> Result<Feedback, GatewayError> {
        serde_json::from_slice(body)
            .map_err(|e| GatewayError::invalid(format!("invalid request body: {e}")))
    }

    /// Credits the version that served the request; the answer names the model.
    pub fn apply(self, gateway: &Gateway) -> Result<Value, GatewayError> {
        match gateway.feedback(&self.request_id, self.reward) {
            Ok(model) => Ok(
                json!({ "request_id": self.request_id, "model": &*model, "reward": self.reward }),
            ),
            Err(error @ FeedbackError::InvalidReward(_)) => {
                Err(GatewayError::invalid(error.to_string()))
            }
            Err(error @ FeedbackError::UnknownRequest(_)) => {
                Err(GatewayError::not_found(error.to_string()))
            }
        }
    }
}
