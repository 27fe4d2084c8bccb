//! Listings that follow the server's pages (protocol 5): the first request,
//! then `ListMore` with each answer's cursor until none is left. What a
//! server sends is bounded: a cursor must grow and stay short, and a
//! listing ends after [`MAX_PAGES`] pages.

use tern_core::wire::{Listing, Msg, MAX_CURSOR_LEN};

use crate::client::Client;
use crate::ClientError;

/// The `take` of [`Client::pages`] for an answer `$variant { list, next }`.
macro_rules! each_page {
    ($variant:path) => {
        |msg, out: &mut Vec<_>| match msg {
            $variant { mut list, next } => {
                out.append(&mut list);
                Ok(next)
            }
            other => Err($crate::client::unexpected(other)),
        }
    };
}
pub(crate) use each_page;

/// The most pages one listing follows (at least one item each).
const MAX_PAGES: usize = 100_000;

impl Client {
    /// Asks `first`, then the following pages of `listing` (told how many
    /// items came so far); `take` moves each answer's items into the list
    /// and returns its cursor (an answer of another kind is the error).
    pub(crate) fn pages<T>(
        &self,
        first: Msg,
        listing: impl Fn(usize) -> Listing,
        mut take: impl FnMut(Msg, &mut Vec<T>) -> Result<Option<String>, ClientError>,
    ) -> Result<Vec<T>, ClientError> {
        let mut out = Vec::new();
        let mut ask = first;
        let mut after: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let next = take(self.ask(ask)?.env.msg, &mut out)?;
            let Some(next) = next else {
                return Ok(out);
            };
            if next.len() > MAX_CURSOR_LEN || after.as_ref().is_some_and(|a| next <= *a) {
                return Err(ClientError::Protocol(
                    "the server's page cursor does not move forward".into(),
                ));
            }
            ask = Msg::ListMore {
                listing: listing(out.len()),
                after: next.clone(),
            };
            after = Some(next);
        }
        Err(ClientError::Protocol(format!(
            "a listing of more than {MAX_PAGES} pages"
        )))
    }
}
