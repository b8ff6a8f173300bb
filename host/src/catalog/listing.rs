//! Lists with filters, an order and cursor pagination — one set of rules for every list
//! endpoint (the ERP "LIST" with filters and orderBy).
//!
//! A query is a map of parameters. [`ListQuery::parse`] takes the shared ones (`limit`,
//! `order_by`, `direction`, `cursor`); each resource then takes its own filters from what is
//! left with [`ListQuery::take`], and [`ListQuery::finish`] refuses any parameter nobody took,
//! naming it and the ones the list accepts. Cursors are opaque: base64 of the order and the
//! last item's sort value and id, so a page continues exactly after the previous one even if
//! items are added meanwhile.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::Error;

/// Default page size.
pub const DEFAULT_LIMIT: usize = 50;
/// Largest page size.
pub const MAX_LIMIT: usize = 250;

/// A value items are ordered by.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SortValue {
    /// A number (times, sizes).
    Int(i64),
    /// Text (names), compared case-insensitively by the caller's choice of value.
    Text(String),
}

/// Something a list can order and page.
pub trait Listed {
    /// The stable id that breaks ties and ends a cursor.
    fn list_id(&self) -> &str;
    /// The value of an order field (one the list declared).
    fn sort_value(&self, field: &str) -> SortValue;
}

#[derive(Serialize, Deserialize)]
struct Cursor {
    o: String,
    d: bool,
    v: SortValue,
    id: String,
}

/// A parsed list query.
#[derive(Clone, Debug)]
pub struct ListQuery {
    /// Page size.
    pub limit: usize,
    /// The order field.
    pub order_by: String,
    /// Largest first.
    pub descending: bool,
    after: Option<(SortValue, String)>,
    rest: BTreeMap<String, String>,
    taken: Vec<&'static str>,
}

/// One page.
#[derive(Debug, Serialize)]
pub struct Page<T> {
    /// The items.
    pub data: Vec<T>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
    /// Keys of stored records that did not decode and were left out (each is logged).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
}

impl<T> Page<T> {
    /// The same page with each item turned into something else (an API view).
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            data: self.data.into_iter().map(f).collect(),
            next_cursor: self.next_cursor,
            unreadable: self.unreadable,
        }
    }
}

impl ListQuery {
    /// Takes the shared parameters from `params`. `orders` lists the accepted order fields;
    /// the first is the default, in the direction `default_descending`.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the parameter: a bad limit, an unknown order field or
    /// direction, or a cursor that is malformed or from a different order.
    pub fn parse(
        mut params: BTreeMap<String, String>,
        orders: &[&str],
        default_descending: bool,
    ) -> Result<ListQuery, Error> {
        let limit = match params.remove("limit") {
            None => DEFAULT_LIMIT,
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(Error::invalid(
                        "limit",
                        format!("`{text}` is not a whole number from 1 to {MAX_LIMIT}"),
                    ))
                }
            },
        };
        let order_by = match params.remove("order_by") {
            None => orders[0].to_string(),
            Some(field) if orders.contains(&field.as_str()) => field,
            Some(field) => {
                return Err(Error::invalid(
                    "order_by",
                    format!(
                        "this list cannot be ordered by `{field}`; use {}",
                        orders.join(", ")
                    ),
                ))
            }
        };
        let descending = match params.remove("direction").as_deref() {
            None => default_descending,
            Some("asc") => false,
            Some("desc") => true,
            Some(other) => {
                return Err(Error::invalid(
                    "direction",
                    format!("`{other}` is not a direction; use asc or desc"),
                ))
            }
        };
        let after = match params.remove("cursor") {
            None => None,
            Some(text) => {
                let bad = || Error::invalid("cursor", "is not a cursor this list returned");
                let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(text.as_bytes())
                    .map_err(|_| bad())?;
                let cursor: Cursor = serde_json::from_slice(&bytes).map_err(|_| bad())?;
                if cursor.o != order_by || cursor.d != descending {
                    return Err(Error::invalid(
                        "cursor",
                        "belongs to a different order; keep order_by and direction while paging",
                    ));
                }
                Some((cursor.v, cursor.id))
            }
        };
        Ok(ListQuery {
            limit,
            order_by,
            descending,
            after,
            rest: params,
            taken: Vec::new(),
        })
    }

    /// Takes a resource filter parameter.
    pub fn take(&mut self, name: &'static str) -> Option<String> {
        self.taken.push(name);
        self.rest.remove(name)
    }

    /// Takes a filter and parses it.
    ///
    /// # Errors
    /// [`Error::Invalid`] on the parameter with the parser's message.
    pub fn take_parsed<T, E: Into<String>>(
        &mut self,
        name: &'static str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<Option<T>, Error> {
        self.take(name)
            .map(|text| parse(&text).map_err(|m| Error::invalid(name, m)))
            .transpose()
    }

    /// Takes a `true`/`false` filter.
    ///
    /// # Errors
    /// [`Error::Invalid`] for any other value.
    pub fn take_bool(&mut self, name: &'static str) -> Result<Option<bool>, Error> {
        self.take_parsed(name, |t| match t {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(format!("`{t}` is not true or false")),
        })
    }

    /// Refuses parameters no one took.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the first unknown parameter and the accepted ones.
    pub fn finish(&self) -> Result<(), Error> {
        if let Some(name) = self.rest.keys().next() {
            let mut known: Vec<&str> = vec!["limit", "order_by", "direction", "cursor"];
            known.extend(&self.taken);
            return Err(Error::invalid(
                name.clone(),
                format!(
                    "is not a parameter of this list; it takes {}",
                    known.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// Whether `item` comes after the cursor in this order.
    fn after_cursor(&self, value: &SortValue, id: &str) -> bool {
        let Some((cv, cid)) = &self.after else {
            return true;
        };
        let ord = value.cmp(cv).then_with(|| id.cmp(cid.as_str()));
        if self.descending {
            ord == Ordering::Less
        } else {
            ord == Ordering::Greater
        }
    }

    /// Orders the (already filtered) `items` and cuts the page after the cursor.
    pub fn page<T: Listed>(&self, items: Vec<T>) -> Page<T> {
        let mut keyed: Vec<(SortValue, T)> = items
            .into_iter()
            .map(|item| (item.sort_value(&self.order_by), item))
            .filter(|(value, item)| self.after_cursor(value, item.list_id()))
            .collect();
        keyed.sort_by(|(va, a), (vb, b)| {
            let ord = va.cmp(vb).then_with(|| a.list_id().cmp(b.list_id()));
            if self.descending {
                ord.reverse()
            } else {
                ord
            }
        });
        let more = keyed.len() > self.limit;
        keyed.truncate(self.limit);
        let next_cursor = if more {
            keyed
                .last()
                .map(|(value, item)| self.cursor_for(value, item.list_id()))
        } else {
            None
        };
        Page {
            data: keyed.into_iter().map(|(_, item)| item).collect(),
            next_cursor,
            unreadable: Vec::new(),
        }
    }

    /// The cursor that continues after an item with this value and id.
    pub fn cursor_for(&self, value: &SortValue, id: &str) -> String {
        let cursor = Cursor {
            o: self.order_by.clone(),
            d: self.descending,
            v: value.clone(),
            id: id.to_string(),
        };
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&cursor).expect("cursor serialises"))
    }

    /// For lists that walk storage in id order themselves: the id of the last item of the
    /// page before (the walk goes on after it).
    pub fn cursor_id(&self) -> Option<&str> {
        self.after.as_ref().map(|(_, id)| id.as_str())
    }
}

/// Case-insensitive substring test for `*_contains` filters.
pub fn contains(haystack: &str, needle: &str) -> bool {
    haystack.to_lowercase().contains(&needle.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Item(&'static str, i64);

    impl Listed for Item {
        fn list_id(&self) -> &str {
            self.0
        }
        fn sort_value(&self, _: &str) -> SortValue {
            SortValue::Int(self.1)
        }
    }

    fn query(pairs: &[(&str, &str)]) -> Result<ListQuery, Error> {
        let params = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ListQuery::parse(params, &["created_at", "name"], false)
    }

    fn items() -> Vec<Item> {
        vec![Item("a", 3), Item("b", 1), Item("c", 2), Item("d", 2)]
    }

    #[test]
    fn pages_follow_the_order_without_gaps_or_repeats() {
        let q = query(&[("limit", "3")]).unwrap();
        let first = q.page(items());
        let ids: Vec<_> = first.data.iter().map(|i| i.0).collect();
        assert_eq!(ids, ["b", "c", "d"]);
        let cursor = first.next_cursor.unwrap();
        let q = query(&[("limit", "3"), ("cursor", &cursor)]).unwrap();
        let second = q.page(items());
        assert_eq!(second.data.iter().map(|i| i.0).collect::<Vec<_>>(), ["a"]);
        assert!(second.next_cursor.is_none());

        let q = query(&[("direction", "desc"), ("limit", "2")]).unwrap();
        let page = q.page(items());
        assert_eq!(
            page.data.iter().map(|i| i.0).collect::<Vec<_>>(),
            ["a", "d"]
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        let err = |pairs: &[(&str, &str)]| query(pairs).unwrap_err().to_string();
        assert!(err(&[("limit", "0")]).contains("limit"));
        assert!(err(&[("limit", "x")]).contains("limit"));
        assert!(err(&[("order_by", "size")]).contains("created_at, name"));
        assert!(err(&[("direction", "up")]).contains("asc or desc"));
        assert!(err(&[("cursor", "!!")]).contains("cursor"));
        let cursor = query(&[("limit", "1")])
            .unwrap()
            .page(items())
            .next_cursor
            .unwrap();
        assert!(err(&[("cursor", &cursor), ("direction", "desc")]).contains("different order"));

        let mut q = query(&[("colour", "red")]).unwrap();
        q.take("name");
        let message = q.finish().unwrap_err().to_string();
        assert!(
            message.contains("colour") && message.contains("name"),
            "{message}"
        );
    }
}
