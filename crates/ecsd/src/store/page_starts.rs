//! Offset paging served as keyset paging (issue 13, item 3).
//!
//! `GET /cloudservers/detail?offset=P&limit=L` asks for rows
//! `(P-1)·L .. P·L` of the listing ordered by `(created_at, id)` descending.
//! Answered with `OFFSET`, the database walks every row before the page: a
//! deep page costs as much as the rows in front of it. But a client that
//! pages with `offset` reads page 1, 2, 3, … in turn, and each page it read
//! tells where the next one starts. This remembers those starts, per
//! project, filter and page size, so the next page (or the same page read
//! again) is a keyset query — `(created_at, id) < key`, no OFFSET — and a
//! jump ahead walks only from the nearest known start.
//!
//! A start is valid only while the listing has not changed: every entry
//! carries the project's *listing generation*, a counter the store bumps
//! (a trigger) whenever a server of the project is created, deleted, or
//! changes a column a filter or the order reads. A start recorded under
//! another generation is never used, so the answer is always exactly what
//! `OFFSET` would give. Plain Rust, no SQL: the store asks, then records.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::ListFilter;

/// At most this many (project, filter, page size) listings are remembered;
/// past it the whole cache is dropped (it only saves time).
const MAX_LISTINGS: usize = 512;
/// At most this many page starts per listing.
const MAX_PAGES: usize = 4096;

/// The sort key of one row: `(created_at, id)` as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowKey {
    pub created_at: String,
    pub id: String,
}

/// Where a page starts in the descending order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// The page's first row is this row (`<=`).
    At(RowKey),
    /// The page starts right after this row (`<`).
    After(RowKey),
}

/// How to read page `page`: from `start`, skipping `skip` rows (0 when the
/// start of that very page is known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub start: Start,
    pub skip: u64,
}

/// One page of one listing, as asked: the project, the filter, the page
/// size, the page (from 1) and the listing's generation when read.
#[derive(Debug, Clone, Copy)]
pub struct PageOf<'a> {
    pub project: &'a str,
    pub filter: &'a ListFilter,
    pub limit: u32,
    pub page: u32,
    pub generation: i64,
}

impl PageOf<'_> {
    /// Pages of a list of ids are not remembered (nor of pages of nothing).
    fn remembered(&self) -> bool {
        self.filter.server_ids.is_none() && self.limit > 0
    }

    fn listing(&self) -> Listing {
        Listing {
            project: self.project.to_owned(),
            filter: self.filter.clone(),
            limit: self.limit,
        }
    }
}

#[derive(Hash, PartialEq, Eq)]
struct Listing {
    project: String,
    filter: ListFilter,
    limit: u32,
}

struct Pages {
    generation: i64,
    starts: BTreeMap<u32, Start>,
}

/// The remembered page starts of every listing; shared by the store's
/// readers.
#[derive(Default)]
pub struct PageStarts {
    listings: Mutex<HashMap<Listing, Pages>>,
}

impl PageStarts {
    /// The plan for `page` (from 1) of a listing at `generation`: the
    /// nearest known start at or before that page, if any was recorded under
    /// the same generation. `None`: read with a plain OFFSET.
    pub fn plan(&self, at: PageOf<'_>) -> Option<Plan> {
        let (page, generation) = (at.page, at.generation);
        if !at.remembered() || page <= 1 {
            return None;
        }
        let listings = self.listings.lock().expect("page starts lock");
        let pages = listings.get(&at.listing())?;
        if pages.generation != generation {
            return None;
        }
        let (&known, start) = pages.starts.range(..=page).next_back()?;
        Some(Plan {
            start: start.clone(),
            skip: u64::from(page - known) * u64::from(at.limit),
        })
    }

    /// Records what reading `page` at `generation` showed: its first and
    /// last rows (`None` for an empty page). A full page also tells where the
    /// next page starts.
    pub fn record(&self, at: PageOf<'_>, rows: Option<(RowKey, RowKey)>, full: bool) {
        let (page, generation) = (at.page, at.generation);
        if !at.remembered() {
            return;
        }
        let Some((first, last)) = rows else { return };
        let page = page.max(1);
        let mut listings = self.listings.lock().expect("page starts lock");
        if listings.len() >= MAX_LISTINGS {
            listings.clear();
        }
        let pages = listings.entry(at.listing()).or_insert_with(|| Pages {
            generation,
            starts: BTreeMap::new(),
        });
        if pages.generation != generation {
            // The listing changed since: what was known is void.
            pages.generation = generation;
            pages.starts.clear();
        }
        if pages.starts.len() >= MAX_PAGES {
            pages.starts.clear();
        }
        if page > 1 {
            pages.starts.insert(page, Start::At(first));
        }
        if full && let Some(next) = page.checked_add(1) {
            pages.starts.insert(next, Start::After(last));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> RowKey {
        RowKey {
            created_at: format!("2026-01-01T00:00:{i:02}Z"),
            id: format!("id-{i}"),
        }
    }

    fn at<'a>(
        project: &'a str,
        filter: &'a ListFilter,
        limit: u32,
        page: u32,
        generation: i64,
    ) -> PageOf<'a> {
        PageOf {
            project,
            filter,
            limit,
            page,
            generation,
        }
    }

    fn filter(name: &str) -> ListFilter {
        ListFilter {
            name: Some(name.into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_full_page_tells_where_the_next_starts_and_a_jump_skips_from_the_nearest() {
        let c = PageStarts::default();
        let f = ListFilter::default();
        assert_eq!(c.plan(at("p", &f, 10, 2, 7)), None, "nothing known yet");
        c.record(at("p", &f, 10, 1, 7), Some((key(1), key(10))), true);
        assert_eq!(
            c.plan(at("p", &f, 10, 2, 7)),
            Some(Plan {
                start: Start::After(key(10)),
                skip: 0
            })
        );
        assert_eq!(
            c.plan(at("p", &f, 10, 5, 7)),
            Some(Plan {
                start: Start::After(key(10)),
                skip: 30
            }),
            "page 5 walks 30 rows from page 2's start"
        );
        c.record(at("p", &f, 10, 5, 7), Some((key(41), key(50))), true);
        assert_eq!(
            c.plan(at("p", &f, 10, 5, 7)),
            Some(Plan {
                start: Start::At(key(41)),
                skip: 0
            }),
            "the same page read again starts at its first row"
        );
        assert_eq!(c.plan(at("p", &f, 10, 1, 7)), None, "page 1 needs no start");
    }

    #[test]
    fn starts_of_another_generation_are_never_used() {
        let c = PageStarts::default();
        let f = ListFilter::default();
        c.record(at("p", &f, 10, 1, 7), Some((key(1), key(10))), true);
        assert_eq!(c.plan(at("p", &f, 10, 2, 8)), None, "the listing changed");
        c.record(at("p", &f, 10, 3, 8), Some((key(21), key(30))), true);
        assert_eq!(
            c.plan(at("p", &f, 10, 2, 8)),
            None,
            "generation 7's start of page 2 is gone"
        );
        assert_eq!(
            c.plan(at("p", &f, 10, 3, 7)),
            None,
            "an older generation is not trusted either"
        );
        assert!(c.plan(at("p", &f, 10, 3, 8)).is_some());
    }

    #[test]
    fn listings_differ_by_project_filter_and_page_size() {
        let c = PageStarts::default();
        c.record(
            at("p", &filter("web"), 10, 1, 1),
            Some((key(1), key(10))),
            true,
        );
        assert!(c.plan(at("p", &filter("web"), 10, 2, 1)).is_some());
        assert_eq!(c.plan(at("q", &filter("web"), 10, 2, 1)), None);
        assert_eq!(c.plan(at("p", &filter("db"), 10, 2, 1)), None);
        assert_eq!(c.plan(at("p", &ListFilter::default(), 10, 2, 1)), None);
        assert_eq!(c.plan(at("p", &filter("web"), 20, 2, 1)), None);
    }

    #[test]
    fn a_short_or_empty_page_says_nothing_of_the_next_and_id_lists_are_not_remembered() {
        let c = PageStarts::default();
        let f = ListFilter::default();
        c.record(at("p", &f, 10, 1, 1), Some((key(1), key(4))), false);
        assert_eq!(c.plan(at("p", &f, 10, 2, 1)), None);
        c.record(at("p", &f, 10, 3, 1), None, false);
        assert_eq!(c.plan(at("p", &f, 10, 3, 1)), None);
        let ids = ListFilter {
            server_ids: Some(vec!["a".into()]),
            ..Default::default()
        };
        c.record(at("p", &ids, 10, 1, 1), Some((key(1), key(10))), true);
        assert_eq!(c.plan(at("p", &ids, 10, 2, 1)), None);
    }

    #[test]
    fn the_cache_stays_bounded() {
        let c = PageStarts::default();
        for i in 0..(MAX_LISTINGS as u32 + 10) {
            c.record(
                at(&format!("p{i}"), &ListFilter::default(), 10, 1, 1),
                Some((key(1), key(10))),
                true,
            );
        }
        assert!(c.listings.lock().unwrap().len() <= MAX_LISTINGS);
        let f = ListFilter::default();
        for page in 1..(MAX_PAGES as u32 + 10) {
            c.record(at("x", &f, 10, page, 1), Some((key(1), key(10))), true);
        }
        assert!(
            c.listings
                .lock()
                .unwrap()
                .values()
                .all(|p| p.starts.len() <= MAX_PAGES)
        );
    }
}
