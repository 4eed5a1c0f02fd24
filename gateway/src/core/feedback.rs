//! Feedback on a served request: a reward in [0, 1] for the version that answered it, which a
//! bandit policy learns from. Both the inference port and the management API take it, in the
//! same JSON shape, through this one function.

use http::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::core::Gateway;
use crate::error::{ErrorKind, GatewayError};
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

/// What a credited reward answers: the request, the model whose version it credited, and the
/// reward.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FeedbackReceipt {
    pub request_id: String,
    pub model: String,
    pub reward: f64,
}

impl Feedback {
    /// The body of an HTTP request, which must say it is JSON: a form or a text/plain body, as
    /// any web page can post across sites without asking, is refused with 415.
    pub fn from_http(headers: &HeaderMap, body: &[u8]) -> Result<Feedback, GatewayError> {
        if !crate::auth::is_json(headers) {
            return Err(GatewayError::new(
                ErrorKind::UnsupportedMediaType,
                "feedback must be sent as Content-Type: application/json",
            ));
        }
        Feedback::parse(body)
    }

    pub fn parse(body: &[u8]) -> Result<Feedback, GatewayError> {
        serde_json::from_slice(body)
            .map_err(|e| GatewayError::invalid(format!("invalid request body: {e}")))
    }

    /// Credits the version that served the request; the answer names the model.
    pub fn apply(self, gateway: &Gateway) -> Result<FeedbackReceipt, GatewayError> {
        match gateway.feedback(&self.request_id, self.reward) {
            Ok(model) => Ok(FeedbackReceipt {
                request_id: self.request_id,
                model: model.to_string(),
                reward: self.reward,
            }),
            Err(error @ FeedbackError::InvalidReward(_)) => {
                Err(GatewayError::invalid(error.to_string()))
            }
            Err(error @ FeedbackError::UnknownRequest(_)) => {
                Err(GatewayError::not_found(error.to_string()))
            }
            Err(error @ FeedbackError::AlreadyRewarded(_)) => {
                Err(GatewayError::new(ErrorKind::AlreadyDone, error.to_string()))
            }
        }
    }
}
