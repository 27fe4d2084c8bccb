//! Every listing, in pages (protocol 5): containers, images (committed,
//! then incomplete), partners, copies, the trail, import events and (6)
//! the audit log. The
//! first page answers the listing's own request, the next ones `ListMore`;
//! each item has a key that ascends in the listing's order, and the last
//! key sent is the cursor (`tern_core::wire::paging`). A session of an
//! older protocol gets the whole listing in one answer, as it always did.

use serde::Serialize;
use tern_core::wire::paging::page;
use tern_core::wire::{
    ErrorKind, Feature, ImageInfo, IncompleteImage, Listing, Msg, MAX_CURSOR_LEN, PAGE_BYTES,
};

use super::{blocking, msg_name, refuse, Answer, Refusal};
use crate::protocol::handler::SessionHandler;
use crate::service::access::Action;

pub fn handle(h: &mut SessionHandler, msg: Msg) -> Answer {
    let (listing, after) = match msg {
        Msg::ContainerList => (Listing::Containers, None),
        Msg::ImageList { container, prefix } => (Listing::Images { container, prefix }, None),
        Msg::PartnerList => (Listing::Partners, None),
        Msg::CopyList => (Listing::Copies, None),
        Msg::TrailGet { max } => (Listing::Trail { max }, None),
        Msg::EventsGet { container, max } => (Listing::Events { container, max }, None),
        Msg::AuditGet { since } => (Listing::Audit { since }, None),
        Msg::ListMore { after, .. } if after.len() > MAX_CURSOR_LEN => {
            return refuse(ErrorKind::Protocol, "a page cursor longer than any sent");
        }
        Msg::ListMore { listing, after } => (listing, Some(after)),
        other => {
            return refuse(
                ErrorKind::Protocol,
                format!("not a listing: {}", msg_name(&other)),
            )
        }
    };
    let budget = Feature::Paging
        .in_version(h.version())
        .then_some(PAGE_BYTES);
    let pages = Pages {
        after: after.as_deref(),
        budget,
    };
    Ok(Some(pages.answer(h, listing)?))
}

/// Where a page starts and how big it may be.
struct Pages<'a> {
    after: Option<&'a str>,
    budget: Option<usize>,
}

/// An item of the images listing: committed ones first, then incomplete.
#[derive(Serialize)]
#[serde(untagged)]
enum ImageItem {
    Committed(ImageInfo),
    Incomplete(IncompleteImage),
}

impl Pages<'_> {
    fn cut<T: Serialize>(&self, keyed: Vec<(String, T)>) -> (Vec<T>, Option<String>) {
        page(keyed, self.after, self.budget)
    }

    /// The number a cursor of a numbered listing (trail, events) holds.
    fn number(&self) -> Result<Option<u64>, Refusal> {
        self.after
            .map(|a| u64::from_str_radix(a, 16))
            .transpose()
            .map_err(|_| Refusal(ErrorKind::Protocol, "a page cursor not sent here".into()))
    }

    fn answer(&self, h: &SessionHandler, listing: Listing) -> Result<Msg, Refusal> {
        let user = h.user()?;
        let (store, repl, scope) = (h.store(), h.replicator(), user.scope());
        Ok(match listing {
            Listing::Containers => {
                let all = blocking(|| store.container_list(&scope))?;
                let (list, next) = self.cut(keyed(all, |c| c.name.to_string()));
                Msg::Containers { list, next }
            }
            Listing::Images { container, prefix } => {
                let mut done = blocking(|| store.image_list(&scope, &container, &prefix))?;
                let tier = h.tier();
                blocking(|| tier.mark_locations(&scope, &container, &mut done))?;
                let begun = blocking(|| store.incomplete_images(&scope, &container, &prefix))?;
                let mut all: Vec<(String, ImageItem)> = Vec::new();
                all.extend(
                    done.into_iter()
                        .map(|i| (format!("c/{}", i.name), ImageItem::Committed(i))),
                );
                all.extend(
                    begun
                        .into_iter()
                        .map(|i| (format!("i/{}", i.name), ImageItem::Incomplete(i))),
                );
                let (items, next) = self.cut(all);
                let (mut list, mut incomplete) = (Vec::new(), Vec::new());
                for item in items {
                    match item {
                        ImageItem::Committed(i) => list.push(i),
                        ImageItem::Incomplete(i) => incomplete.push(i),
                    }
                }
                Msg::Images {
                    list,
                    incomplete,
                    next,
                }
            }
            Listing::Partners => {
                user.may(Action::ListPartners)?;
                let all = blocking(|| repl.partners())?;
                let (list, next) = self.cut(keyed(all, |p| p.name.clone()));
                Msg::Partners { list, next }
            }
            Listing::Copies => {
                let all = blocking(|| repl.list(&scope))?;
                // Newest first: the key ascends as `created` descends.
                let key = |c: &tern_core::wire::CopyInfo| {
                    format!("{:016x}/{}", u64::MAX - c.created, c.id)
                };
                let (list, next) = self.cut(keyed(all, key));
                Msg::Copies { list, next }
            }
            Listing::Trail { max } => {
                // Newest first: rows descend, keys ascend.
                let before = self.number()?.map(|k| u64::MAX - k);
                let rows = blocking(|| repl.history(&scope, max, before))?;
                let keyed = rows
                    .into_iter()
                    .map(|(row, e)| (format!("{:016x}", u64::MAX - row), e))
                    .collect();
                let (list, next) = self.cut(keyed);
                Msg::Trail { list, next }
            }
            Listing::Events { container, max } => {
                let after = self.number()?;
                let all = blocking(|| store.events(&scope, &container, max, after))?;
                let (list, next) = self.cut(keyed(all, |e| format!("{:016x}", e.id)));
                Msg::Events { list, next }
            }
            Listing::Audit { since } => {
                user.may(Action::ReadAudit)?;
                let budget = self.budget.unwrap_or(usize::MAX);
                let read =
                    tokio::task::block_in_place(|| h.audit_log().read(since, self.after, budget));
                let (lines, next) = read.map_err(|e| Refusal(ErrorKind::Invalid, e.to_string()))?;
                Msg::Audit { lines, next }
            }
        })
    }
}

fn keyed<T>(items: Vec<T>, key: impl Fn(&T) -> String) -> Vec<(String, T)> {
    items.into_iter().map(|t| (key(&t), t)).collect()
}
