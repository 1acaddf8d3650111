//! The one place that decides what an answer from dakkio means for the
//! batch that caused it (dakkio-api.md §6). Pure: no I/O, no clock except
//! the `now` passed in; unit tested case by case below.

use std::time::{Duration, SystemTime};

use super::client::{Answer, TransportError};
use super::retry_after;
use crate::dakkio::messages::INVALID_BUCKET_ID;

/// What the forwarder does next with the batch it sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// 2xx: the whole batch is delivered.
    Delivered,
    /// 400: something in the batch is invalid. Split it (one point: dead
    /// letter with this message and details). `bad_index` is the first
    /// point the server's `details` named, if any: a hint to isolate it
    /// faster; plain halving works without it.
    Split {
        status: u16,
        message: String,
        details: Option<String>,
        bad_index: Option<usize>,
    },
    /// 413: the body is too large; halve the bucket's batch size.
    Shrink,
    /// 401/403/404, a redirect, or a 400 about the bucket itself: the
    /// configuration is wrong. Pause the bucket until fixed; `fix` tells the
    /// operator what to do.
    Pause { status: u16, fix: &'static str },
    /// 429 with a usable reset time (already clamped).
    WaitFor(Duration),
    /// 5xx, 408, 429 without a usable time, other unexpected statuses,
    /// timeouts, connection and TLS errors: exponential backoff.
    Backoff { reason: String },
}

/// Map an answer (or a transport failure) to an [`Action`].
pub fn classify(outcome: &Result<Answer, TransportError>, now: SystemTime) -> Action {
    let answer = match outcome {
        Ok(a) => a,
        Err(e) => {
            return Action::Backoff {
                reason: e.to_string(),
            }
        }
    };
    let status = answer.status;
    match status {
        200..=299 => Action::Delivered,
        400 => {
            let body = answer.error_body();
            if body.message == INVALID_BUCKET_ID {
                return Action::Pause {
                    status,
                    fix: "dakkio refuses the bucket id; check `buckets[].id` against the \
                          bucket's id in the dakkio dashboard",
                };
            }
            Action::Split {
                status,
                bad_index: body.first_point_index,
                message: body.message,
                details: body.details,
            }
        }
        413 => Action::Shrink,
        401 => Action::Pause {
            status,
            fix: "dakkio does not know this write key (deleted or mistyped); create a write \
                  key for the bucket in dakkio and set it in the bucket's `write_key_env`, \
                  `write_key_file` or `write_key`, then reload",
        },
        403 => Action::Pause {
            status,
            fix: "the key is not allowed to write to this bucket (a read key, or another \
                  bucket's key); use this bucket's write key (`dakkio_w_…`), then reload",
        },
        404 => Action::Pause {
            status,
            fix: "dakkio does not know this bucket (deleted, or the id is wrong), or \
                  `uplink.url` is not the dakkio API; check `buckets[].id` and `uplink.url`",
        },
        300..=399 => Action::Pause {
            status,
            fix: "`uplink.url` answers with a redirect; set it to the API's final address, \
                  e.g. `https://api.dakkio.io`",
        },
        429 => match retry_after::wait_from_headers(
            answer.retry_after.as_deref(),
            answer.rate_limit_reset.as_deref(),
            now,
        ) {
            Some(d) => Action::WaitFor(d),
            None => Action::Backoff {
                reason: "HTTP 429 without a usable reset time".into(),
            },
        },
        _ => Action::Backoff {
            reason: format!("HTTP {status}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn answer(status: u16, body: &str) -> Result<Answer, TransportError> {
        Ok(Answer {
            status,
            body: Bytes::copy_from_slice(body.as_bytes()),
            ..Answer::default()
        })
    }

    #[test]
    fn success_statuses_deliver() {
        for s in [200, 201, 202, 204] {
            assert_eq!(classify(&answer(s, ""), now()), Action::Delivered);
        }
    }

    #[test]
    fn bad_request_splits_with_message_details_and_index() {
        let body = r#"{"error":"Validation Error","message":"Invalid request parameters",
            "details":[{"path":["body","dataPoints",617,"values","status"],"message":"bad"}]}"#;
        match classify(&answer(400, body), now()) {
            Action::Split {
                status,
                message,
                details,
                bad_index,
            } => {
                assert_eq!(status, 400);
                assert_eq!(message, "Invalid request parameters");
                assert_eq!(bad_index, Some(617));
                assert!(details.unwrap().contains("\"status\""));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_request_without_json_still_splits() {
        match classify(&answer(400, "<html>nope</html>"), now()) {
            Action::Split {
                message,
                details,
                bad_index,
                ..
            } => {
                assert_eq!(message, "HTTP 400");
                assert_eq!(details, None);
                assert_eq!(bad_index, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_bucket_id_pauses() {
        let body = r#"{"error":"Validation Error","message":"Invalid bucket ID format"}"#;
        assert!(matches!(
            classify(&answer(400, body), now()),
            Action::Pause { status: 400, .. }
        ));
    }

    #[test]
    fn too_large_shrinks() {
        assert_eq!(classify(&answer(413, ""), now()), Action::Shrink);
    }

    #[test]
    fn auth_and_missing_bucket_pause() {
        for s in [401, 403, 404, 301, 308] {
            match classify(&answer(s, ""), now()) {
                Action::Pause { status, fix } => {
                    assert_eq!(status, s);
                    assert!(!fix.is_empty());
                }
                other => panic!("{s}: {other:?}"),
            }
        }
    }

    #[test]
    fn rate_limited_waits_for_headers() {
        let mut a = Answer {
            status: 429,
            rate_limit_reset: Some((1_800_000_000u64 + 7200).to_string()),
            ..Answer::default()
        };
        assert_eq!(
            classify(&Ok(a.clone()), now()),
            Action::WaitFor(Duration::from_secs(7200))
        );
        a.retry_after = Some("30".into());
        assert_eq!(
            classify(&Ok(a.clone()), now()),
            Action::WaitFor(Duration::from_secs(30))
        );
        a.retry_after = Some("garbage".into());
        a.rate_limit_reset = Some("1".into());
        assert_eq!(
            classify(&Ok(a.clone()), now()),
            Action::WaitFor(Duration::from_secs(1))
        );
        a.rate_limit_reset = Some("1700000000".into()); // the past
        assert!(matches!(classify(&Ok(a), now()), Action::Backoff { .. }));
        assert!(matches!(
            classify(&answer(429, ""), now()),
            Action::Backoff { .. }
        ));
    }

    #[test]
    fn server_errors_and_odd_statuses_back_off() {
        for s in [500, 502, 503, 504, 408, 409, 418, 100] {
            assert!(
                matches!(classify(&answer(s, ""), now()), Action::Backoff { .. }),
                "{s}"
            );
        }
    }

    #[test]
    fn transport_errors_back_off() {
        for e in [
            TransportError::Timeout,
            TransportError::Connect("refused".into()),
            TransportError::Tls("bad certificate".into()),
            TransportError::Other("reset".into()),
        ] {
            match classify(&Err(e.clone()), now()) {
                Action::Backoff { reason } => assert_eq!(reason, e.to_string()),
                other => panic!("{other:?}"),
            }
        }
    }
}
