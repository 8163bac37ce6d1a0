//! The exit codes of `orchctl`: stable, documented in `--help`, and decided
//! in one place ([`Exit::of`]) from the one failure type of every command.

use std::process::ExitCode;

use orchctl::ClientError;
use orchctl::contracts::ErrorEnvelope;

/// Shown at the end of `orchctl --help`; keep in step with [`Exit::of`].
pub const EXIT_CODES_HELP: &str = "\
Exit codes (stable):
  0  ok (also: a canceled task's stream, and stdout closed early by its reader)
  2  usage: bad flags or arguments
  3  rejected, retry later: 429 / 503 or any other retriable error answer
       (queue full, rate limit, pool unready or draining, failed pool reload);
       the hint says how long to wait
  4  not found: unknown task or session id in this --scope, unknown pool or tenant
  5  task failed: its stream ended with an `error` event, or its status is `failed`
  6  invalid or not allowed: INVALID_PARAMS, CONFLICT (other 4xx); 401 UNAUTHORIZED
       (no or unknown --api-key); 403 FORBIDDEN (the key's role may not do this,
       e.g. a client key on pools, pool, replicasets or capabilities, or on
       another tenant's usage)
  7  server unreachable, unexpected answer, or INTERNAL (500)";

/// Why a command did not succeed.
#[derive(Debug)]
pub enum Failure {
    /// A call answered with an error (or never reached the server).
    Client(Box<ClientError>),
    /// The task itself ended with (or is in) an error.
    TaskFailed(Box<ErrorEnvelope>),
    /// Arguments that clap cannot check on its own.
    Usage(String),
    /// Local I/O (reading stdin, writing stdout).
    Io(std::io::Error),
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Self {
        Self::Client(Box::new(error))
    }
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Self {
        Self::Io(error)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Usage = 2,
    Rejected = 3,
    NotFound = 4,
    TaskFailed = 5,
    Invalid = 6,
    Unavailable = 7,
}

impl Exit {
    /// The one mapping from a failure to its exit code.
    pub fn of(failure: &Failure) -> Exit {
        match failure {
            Failure::Usage(_) => Exit::Usage,
            Failure::TaskFailed(_) => Exit::TaskFailed,
            // The reader closed stdout (`orchctl stream t | head -3`): done.
            Failure::Io(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Exit::Ok,
            Failure::Io(_) => Exit::Unavailable,
            Failure::Client(error) => match error.as_ref() {
                ClientError::Transport(_) | ClientError::Protocol(_) => Exit::Unavailable,
                ClientError::Api {
                    status, envelope, ..
                } => match status {
                    404 => Exit::NotFound,
                    500 => Exit::Unavailable,
                    429 | 503 => Exit::Rejected,
                    _ if envelope.retriable => Exit::Rejected,
                    400..=499 => Exit::Invalid,
                    _ => Exit::Unavailable,
                },
            },
        }
    }

    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchctl::contracts::ErrorCode;

    fn api(status: u16, code: ErrorCode) -> Failure {
        Failure::from(ClientError::Api {
            status,
            envelope: ErrorEnvelope {
                code: code.into(),
                message: "m".into(),
                retriable: code.retriable(),
                retry_after_ms: None,
                policy: None,
                engine: None,
                correlation_id: "c".into(),
            },
            retry_after_s: None,
            backoff_ms: None,
        })
    }

    #[test]
    fn every_answer_maps_to_its_documented_code() {
        use ErrorCode::*;
        let cases = [
            (429, AdmissionReject, Exit::Rejected),
            (503, PoolUnready, Exit::Rejected),
            (503, PoolUnavailable, Exit::Rejected),
            (503, ReplicaExhausted, Exit::Rejected),
            (504, DecodeTimeout, Exit::Rejected),
            (502, WorkerReset, Exit::Rejected),
            (404, NotFound, Exit::NotFound),
            (400, InvalidParams, Exit::Invalid),
            (409, Conflict, Exit::Invalid),
            (401, Unauthorized, Exit::Invalid),
            (403, Forbidden, Exit::Invalid),
            // INTERNAL is 7 whatever its `retriable` flag says.
            (500, Internal, Exit::Unavailable),
        ];
        for (status, code, exit) in cases {
            assert_eq!(Exit::of(&api(status, code)), exit, "{status} {code}");
        }
    }

    #[test]
    fn local_and_task_failures_have_their_own_codes() {
        let transport = Failure::from(ClientError::Transport("refused".into()));
        let protocol = Failure::from(ClientError::Protocol("garbage".into()));
        let io = Failure::Io(std::io::Error::other("stdin"));
        let usage = Failure::Usage("no prompt".into());
        let Failure::Client(error) = api(502, ErrorCode::WorkerReset) else {
            unreachable!()
        };
        let envelope = error.envelope().unwrap().clone();
        assert_eq!(Exit::of(&transport), Exit::Unavailable);
        assert_eq!(Exit::of(&protocol), Exit::Unavailable);
        assert_eq!(Exit::of(&io), Exit::Unavailable);
        let pipe = Failure::Io(std::io::ErrorKind::BrokenPipe.into());
        assert_eq!(Exit::of(&pipe), Exit::Ok);
        assert_eq!(Exit::of(&usage), Exit::Usage);
        assert_eq!(
            Exit::of(&Failure::TaskFailed(Box::new(envelope))),
            Exit::TaskFailed
        );
        assert_eq!(Exit::TaskFailed.code(), 5);
    }

    #[test]
    fn the_help_text_lists_every_code() {
        for exit in [
            Exit::Ok,
            Exit::Usage,
            Exit::Rejected,
            Exit::NotFound,
            Exit::TaskFailed,
            Exit::Invalid,
            Exit::Unavailable,
        ] {
            let line = format!("\n  {}  ", exit.code());
            assert!(
                EXIT_CODES_HELP.contains(&line),
                "{exit:?} is not documented"
            );
        }
    }
}
