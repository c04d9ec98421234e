//! What every command passes before it runs, all from the command table: the command exists
//! (else Redis's `unknown command`), its argument count fits the arity (else `wrong number of
//! arguments for '<name>' command`), and, when users are configured, the connection has
//! authenticated (`NOAUTH`) with a role the command allows (`NOPERM`). Commands whose role is
//! `None` in the table (`AUTH`, `HELLO`, `QUIT`, `RESET`) need no authentication. Then the
//! command is counted, with its error code when it failed.

use std::sync::atomic::Ordering;

use super::commands::{Session, unknown_command, wrong_arity};
use super::parse::Command;
use super::reply::Reply;
use super::table::{Spec, lookup};

impl Session {
    /// The command's table entry if it may run; else the refusal, with the entry when the
    /// command is known.
    pub(super) fn admit(
        &mut self,
        args: &Command,
    ) -> Result<&'static Spec, (Option<&'static Spec>, Reply)> {
        let Some(name) = args.first() else {
            return Err((None, Reply::Nil));
        };
        let Some(spec) = lookup(name) else {
            return Err((None, unknown_command(name, &args[1..])));
        };
        if !spec.arity_ok(args.len()) {
            return Err((Some(spec), wrong_arity(spec.name)));
        }
        self.recheck();
        if let Some(role) = spec.role {
            self.check_role(role, spec.name)
                .map_err(|reply| (Some(spec), reply))?;
        }
        self.conn.info().touch(spec);
        Ok(spec)
    }

    /// Counts a command (`spec`: `None` for an unknown one) and its error, if `reply` is one.
    pub(super) fn count(&self, spec: Option<&'static Spec>, reply: &Reply) {
        self.registry
            .commands_processed
            .fetch_add(1, Ordering::Relaxed);
        let error = match reply {
            Reply::Error(text) => Some(text.as_str()),
            _ => None,
        };
        self.node.metrics().resp.record_command(spec, error);
    }
}
