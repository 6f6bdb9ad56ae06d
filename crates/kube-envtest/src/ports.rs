//! Free loopback ports for parallel tests.
//!
//! A port is found by binding port 0 and releasing it, which leaves a window in which
//! another process may take it. Two defences close it in practice: this process never
//! hands out the same port twice, and a server that fails to bind is restarted on
//! fresh ports by its caller (see [`is_port_conflict`]).

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// How often a server is restarted on fresh ports after losing a port race.
pub(crate) const PORT_ATTEMPTS: usize = 4;

/// A loopback TCP port that was free a moment ago and that this process has not
/// handed out before.
pub(crate) fn free_port() -> Result<u16> {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..64 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| Error::io("cannot bind a free port on", "127.0.0.1", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::io("cannot read the port bound on", "127.0.0.1", e))?
            .port();
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
        if handed_out.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    Err(Error::io(
        "cannot find an unused port on",
        "127.0.0.1",
        std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "every port offered was handed out before",
        ),
    ))
}

/// Whether a server's start-up failure was a lost port race, worth a retry on
/// other ports.
pub(crate) fn is_port_conflict(err: &Error) -> bool {
    matches!(err, Error::Exited { tail, .. } if tail.contains("address already in use"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_never_handed_out_twice() {
        let ports: Vec<u16> = (0..200).map(|_| free_port().expect("a free port")).collect();
        let unique: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len());
    }
}
