//! What a transport error means: a request that never reached a server, a connection
//! that is gone or going, a server asking for fewer pings; and errors written for
//! people, a TLS refusal first.

/// Whether a transport error proves that no server saw the request: the connection
/// was gone before the request was handed to it, or the server refused the stream or
/// announced with a GOAWAY that it would not process it.
pub(crate) fn never_reached_a_server(err: &(dyn std::error::Error + 'static)) -> bool {
    any_cause(err, never_handed_over)
        || any_cause(err, |e: &h2::Error| {
            // Refused outright, or beyond the last stream a GOAWAY said the server
            // would process: h2 fails only those streams with the GOAWAY itself,
            // whatever its reason (graceful, as nginx after every 1,000 calls on a
            // connection, or not, as a server that thinks it is abused); the streams
            // it did take end with the connection, as calls cut off.
            e.reason() == Some(h2::Reason::REFUSED_STREAM) || going_away(e)
        })
}

/// Whether hyper gave the request back unsent: its connection was closed before the
/// request reached it ("canceled"), or ended while the request still waited in its
/// queue, or for a stream the server's limit did not allow yet ("dispatch task is
/// gone").
pub(crate) fn never_handed_over(err: &hyper::Error) -> bool {
    err.is_canceled() || (err.is_user() && err.to_string().starts_with("dispatch task is gone"))
}

/// Whether a transport error says the connection itself is gone, not only this call:
/// gone before the call was handed to it, closed or reset under it (h2 fails every open
/// stream with an I/O error then), or not answering a liveness ping (hyper's
/// keep-alive timeout).
pub(crate) fn connection_lost(err: &(dyn std::error::Error + 'static)) -> bool {
    any_cause(err, never_handed_over)
        || any_cause(err, hyper::Error::is_timeout)
        || any_cause(err, h2::Error::is_io)
}

/// Whether the server said, with a GOAWAY, that this connection takes no new calls.
pub(crate) fn going_away(err: &(dyn std::error::Error + 'static)) -> bool {
    any_cause(err, |e: &h2::Error| e.is_go_away() && e.is_remote())
}

/// Whether the server closed the connection with `ENHANCE_YOUR_CALM` and the debug
/// data `too_many_pings`, as gRPC servers do to a client that pings too often. (Only
/// the calls above the GOAWAY's last stream get that error; the others end with the
/// connection. Other `ENHANCE_YOUR_CALM`s, such as h2's `too_many_resets`, are not
/// about pings.)
pub(crate) fn asked_to_calm_down(err: &(dyn std::error::Error + 'static)) -> bool {
    any_cause(err, |e: &h2::Error| {
        e.is_go_away()
            && e.is_remote()
            && e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)
            && e.to_string().contains("too_many_pings")
    })
}

/// Whether `err` or one of its causes is an `E` for which `test` holds.
pub(crate) fn any_cause<E: std::error::Error + 'static>(
    err: &(dyn std::error::Error + 'static),
    test: impl Fn(&E) -> bool + Copy,
) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.downcast_ref::<E>().is_some_and(test) {
            return true;
        }
        // An io::Error's `source()` skips the error it wraps: look at that one too.
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && any_cause(inner, test)
        {
            return true;
        }
        current = e.source();
    }
    false
}

/// An error and its causes, as [`crate::error::describe`] writes them; a TLS refusal
/// is said first and plainly ("certificate required" is what a user can act on, not
/// the chain of transport errors around it).
pub(crate) fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    if let Some(tls) = super::tls::explain(err) {
        return tls;
    }
    crate::error::describe(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Status;

    #[test]
    fn causes_are_found_anywhere_in_the_chain() {
        let inner = std::io::Error::other(Status::unavailable("inner"));
        let outer = Status::from_error(Box::new(inner));
        assert!(any_cause(&outer, |s: &Status| s.message() == "inner"));
        assert!(!any_cause(&outer, h2::Error::is_io));
    }
}
