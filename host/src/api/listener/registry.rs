//! The open API connections: who holds each slot, what each is doing, and which one gives way
//! when a slot is needed. This is where "one client cannot hoard the listener" is decided.
//!
//! - One client (an IPv4 address, or an IPv6 /64) holds at most its own cap. When it opens
//!   another connection, its own connection idle the longest is closed to make room; when
//!   all of its connections have a request in progress, the new one is refused.
//! - When the host's slots are full, a newcomer from anywhere takes the slot of the
//!   connection whose client has been silent the longest among those held by their client:
//!   idle ones (no request in progress: kept alive, or headers not yet complete) and ones
//!   whose request waits for body bytes that do not come. A connection the host is working
//!   on is never closed for another. Only when none qualifies does the newcomer wait.
//!
//! Everything here is a map lookup or a scan of the open connections under one lock, so the
//! accept loop stays cheap; connections report what they do through atomics.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tokio::sync::Notify;

/// What the per-address cap counts as one client: an IPv4 address, or an IPv6 /64 (a host or
/// site is usually given a whole /64, so counting single IPv6 addresses would let one client
/// hold as many slots as it picks addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer(IpNet);

impl Peer {
    /// The client a peer address belongs to (an IPv4-mapped IPv6 address is its IPv4 one).
    pub fn of(address: IpAddr) -> Peer {
        match address {
            IpAddr::V4(v4) => Peer(IpNet::from(IpAddr::V4(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Peer(IpNet::from(IpAddr::V4(v4))),
                None => Peer(
                    IpNet::new(IpAddr::V6(v6), 64)
                        .expect("64 is a valid IPv6 prefix")
                        .trunc(),
                ),
            },
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpNet::V4(net) => write!(f, "{}", net.addr()),
            IpNet::V6(net) => write!(f, "{net}"),
        }
    }
}

/// The registry's limits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections open at once, not counting those asked to close.
    pub host: usize,
    /// Connections asked to close that may still be open beside `host` (they close within
    /// moments; this bounds the descriptors they hold meanwhile).
    pub closing: usize,
    /// Connections one [`Peer`] may hold.
    pub per_peer: usize,
    /// Peers exempt from `per_peer` (proxies carrying many clients).
    pub trusted: Vec<IpNet>,
}

/// What one connection is doing, shared by its task, its requests and the registry.
pub struct Activity {
    /// Requests whose handler is running (HTTP/1: at most one).
    handling: AtomicUsize,
    /// Of those, requests whose handler waits for body bytes from the client.
    awaiting_body: AtomicUsize,
    /// When the client was last heard from (connected, started or finished a request, sent
    /// body bytes), in nanoseconds since `epoch`.
    heard_at: AtomicU64,
    /// Whether the registry has asked the connection to close.
    close_asked: AtomicBool,
    /// Wakes the connection's task when it is asked to close.
    close: Notify,
    /// The registry's clock origin.
    epoch: Instant,
    /// The registry's "a slot may have come free" signal.
    room: Arc<Notify>,
}

impl Activity {
    fn new(epoch: Instant, room: Arc<Notify>) -> Activity {
        let activity = Activity {
            handling: AtomicUsize::new(0),
            awaiting_body: AtomicUsize::new(0),
            heard_at: AtomicU64::new(0),
            close_asked: AtomicBool::new(false),
            close: Notify::new(),
            epoch,
            room,
        };
        activity.heard();
        activity
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Notes that the client was heard from now.
    pub fn heard(&self) {
        self.heard_at.store(self.now_ns(), Ordering::Relaxed);
    }

    fn heard_at_ns(&self) -> u64 {
        self.heard_at.load(Ordering::Relaxed)
    }

    /// How long the client has been silent.
    pub fn silent_for(&self) -> Duration {
        let heard = self.heard_at.load(Ordering::Relaxed);
        Duration::from_nanos(self.now_ns().saturating_sub(heard))
    }

    /// Marks a request in progress until the returned guard is dropped.
    pub fn start_request(self: &Arc<Self>) -> Handling {
        self.heard();
        self.handling.fetch_add(1, Ordering::SeqCst);
        Handling(self.clone())
    }

    /// Notes that a request's handler started or stopped waiting for body bytes.
    pub fn awaiting_body(&self, waiting: bool) {
        if waiting {
            self.awaiting_body.fetch_add(1, Ordering::SeqCst);
            self.room.notify_one();
        } else {
            self.awaiting_body.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Whether a request's handler is waiting for body bytes.
    pub fn is_awaiting_body(&self) -> bool {
        self.awaiting_body.load(Ordering::SeqCst) > 0
    }

    /// How long the connection has had no request in progress; `None` while it has one.
    pub fn idle_for(&self) -> Option<Duration> {
        (self.handling.load(Ordering::SeqCst) == 0).then(|| self.silent_for())
    }

    /// Whether what the connection waits for is its client: no request in progress, or a
    /// request waiting for its body.
    pub fn held_by_client(&self) -> bool {
        self.handling.load(Ordering::SeqCst) == 0 || self.is_awaiting_body()
    }

    /// Completes once the registry has asked the connection to close.
    pub async fn close_asked(&self) {
        while !self.close_asked.load(Ordering::SeqCst) {
            self.close.notified().await;
        }
    }

    fn ask_to_close(&self) {
        self.close_asked.store(true, Ordering::SeqCst);
        self.close.notify_one();
    }
}

/// A request in progress on a connection; dropped with the request's response future.
pub struct Handling(Arc<Activity>);

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.heard();
        self.0.handling.fetch_sub(1, Ordering::SeqCst);
        self.0.room.notify_one();
    }
}

/// Why a connection was closed to make room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crowded {
    /// Its own client was at its cap.
    Peer,
    /// The host's slots were full.
    Host,
}

/// A connection let in.
pub struct Admitted {
    /// Its place in the registry, held until the connection ends.
    pub slot: Slot,
    /// The connection asked to close to make room for it, if one was.
    pub made_room: Option<(Peer, Crowded)>,
}

/// Why a connection was not let in.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Its client holds its cap and none of those connections is idle.
    #[error(
        "{peer} holds {cap} connections (api.max_connections_per_address), each with a request \
         in progress"
    )]
    PeerFull {
        /// The client.
        peer: Peer,
        /// Its cap.
        cap: usize,
    },
    /// The host's slots are full and no connection can give way.
    #[error("all {cap} connection slots (api.max_connections) have a request in progress")]
    HostFull {
        /// The host's cap.
        cap: usize,
    },
}

/// One open connection's place in the registry: freed when dropped.
pub struct Slot {
    registry: Arc<Registry>,
    id: u64,
    activity: Arc<Activity>,
}

impl Slot {
    /// What the connection is doing, for its task to report and read.
    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.registry.remove(self.id);
    }
}

/// The open connections.
pub struct Registry {
    book: Mutex<Book>,
    limits: Limits,
    /// Signalled when a slot may have come free (a connection closed, a request ended or
    /// started waiting for its body). Only the accept loop waits on it.
    room: Arc<Notify>,
    /// Signalled when the last connection closes.
    emptied: Notify,
    epoch: Instant,
}

/// The registry's books.
#[derive(Default)]
struct Book {
    next_id: u64,
    /// Every open connection by id, those asked to close included.
    open: HashMap<u64, Entry>,
    /// Open connections not asked to close.
    live: usize,
    /// The same per capped peer (trusted ones are not counted here).
    live_per_peer: HashMap<Peer, usize>,
}

struct Entry {
    peer: Peer,
    /// Whether the per-peer cap applies (the peer is not a trusted proxy).
    capped: bool,
    activity: Arc<Activity>,
    /// Asked to close: no longer counted as live.
    closing: bool,
}

impl Registry {
    /// An empty registry with these limits.
    pub fn new(limits: Limits) -> Arc<Registry> {
        Arc::new(Registry {
            book: Mutex::new(Book::default()),
            limits,
            room: Arc::new(Notify::new()),
            emptied: Notify::new(),
            epoch: Instant::now(),
        })
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets a connection from `address` in, asking another to close when that makes room,
    /// or says why not.
    ///
    /// # Errors
    /// [`Refused`] when its client is at its cap with every connection busy, or the host is
    /// full and no connection can give way.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Result<Admitted, Refused> {
        let peer = Peer::of(address);
        let capped = !self.limits.trusted.iter().any(|net| net.contains(&address));
        let mut book = self.book();
        let host_full = Refused::HostFull {
            cap: self.limits.host,
        };
        if book.open.len() >= self.limits.host + self.limits.closing {
            return Err(host_full);
        }
        let at_peer_cap =
            capped && book.live_per_peer.get(&peer).copied().unwrap_or(0) >= self.limits.per_peer;
        let made_room = if at_peer_cap {
            let victim = book
                .longest_silent(|entry| entry.peer == peer && entry.activity.idle_for().is_some())
                .ok_or(Refused::PeerFull {
                    peer,
                    cap: self.limits.per_peer,
                })?;
            book.ask_to_close(victim);
            Some((peer, Crowded::Peer))
        } else if book.live >= self.limits.host {
            let victim = book
                .longest_silent(|entry| entry.activity.held_by_client())
                .ok_or(host_full)?;
            let victim_peer = book.ask_to_close(victim);
            Some((victim_peer, Crowded::Host))
        } else {
            None
        };
        let id = book.next_id;
        book.next_id += 1;
        let activity = Arc::new(Activity::new(self.epoch, self.room.clone()));
        book.live += 1;
        if capped {
            *book.live_per_peer.entry(peer).or_insert(0) += 1;
        }
        book.open.insert(
            id,
            Entry {
                peer,
                capped,
                activity: activity.clone(),
                closing: false,
            },
        );
        Ok(Admitted {
            slot: Slot {
                registry: self.clone(),
                id,
                activity,
            },
            made_room,
        })
    }

    /// Whether a connection from a peer under its cap would be let in now.
    pub fn has_room(&self) -> bool {
        let book = self.book();
        book.open.len() < self.limits.host + self.limits.closing
            && (book.live < self.limits.host
                || book
                    .longest_silent(|entry| entry.activity.held_by_client())
                    .is_some())
    }

    /// Completes when [`Registry::has_room`] says yes.
    pub async fn room(&self) {
        while !self.has_room() {
            self.room.notified().await;
        }
    }

    /// Open connections, those asked to close included.
    pub fn open(&self) -> usize {
        self.book().open.len()
    }

    /// Completes once no connection is open.
    pub async fn emptied(&self) {
        loop {
            let emptied = self.emptied.notified();
            if self.open() == 0 {
                return;
            }
            emptied.await;
        }
    }

    fn remove(&self, id: u64) {
        let mut book = self.book();
        if let Some(entry) = book.open.remove(&id) {
            if !entry.closing {
                book.release(&entry);
            }
        }
        let empty = book.open.is_empty();
        drop(book);
        self.room.notify_one();
        if empty {
            self.emptied.notify_waiters();
        }
    }
}

impl Book {
    /// The live connection among those `eligible` whose client has been silent the longest
    /// (of equals, the oldest).
    fn longest_silent(&self, eligible: impl Fn(&Entry) -> bool) -> Option<u64> {
        self.open
            .iter()
            .filter(|(_, entry)| !entry.closing && eligible(entry))
            .min_by_key(|(id, entry)| (entry.activity.heard_at_ns(), **id))
            .map(|(id, _)| *id)
    }

    /// Asks a connection to close and stops counting it as live; returns its peer.
    fn ask_to_close(&mut self, id: u64) -> Peer {
        let entry = self.open.get_mut(&id).expect("the victim is open");
        entry.closing = true;
        entry.activity.ask_to_close();
        let (peer, capped) = (entry.peer, entry.capped);
        self.live -= 1;
        if capped {
            self.uncount_peer(peer);
        }
        peer
    }

    fn release(&mut self, entry: &Entry) {
        self.live -= 1;
        if entry.capped {
            self.uncount_peer(entry.peer);
        }
    }

    fn uncount_peer(&mut self, peer: Peer) {
        if let Some(count) = self.live_per_peer.get_mut(&peer) {
            *count -= 1;
            if *count == 0 {
                self.live_per_peer.remove(&peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(host: usize, per_peer: usize) -> Limits {
        Limits {
            host,
            closing: 2,
            per_peer,
            trusted: vec!["10.9.0.0/16".parse().unwrap()],
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn closed(slot: &Slot) -> bool {
        slot.activity.close_asked.load(Ordering::SeqCst)
    }

    /// Sets when the client of `slot` was last heard from: `seconds` after the epoch.
    fn heard_at(slot: &Slot, seconds: u64) {
        slot.activity
            .heard_at
            .store(seconds * 1_000_000_000, Ordering::SeqCst);
    }

    #[test]
    fn an_ipv6_client_is_its_64_and_a_mapped_address_its_ipv4_one() {
        assert_eq!(
            Peer::of(ip("2001:db8:1:2:aaaa::1")),
            Peer::of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            Peer::of(ip("2001:db8:1:2::1")),
            Peer::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(Peer::of(ip("::ffff:192.0.2.7")), Peer::of(ip("192.0.2.7")));
        assert_eq!(
            Peer::of(ip("2001:db8:1:2::1")).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(Peer::of(ip("192.0.2.7")).to_string(), "192.0.2.7");
    }

    #[test]
    fn a_client_at_its_cap_replaces_its_longest_idle_connection_or_is_refused() {
        let registry = Registry::new(limits(100, 2));
        let first = registry.admit(ip("192.0.2.1")).unwrap().slot;
        let second = registry.admit(ip("192.0.2.1")).unwrap().slot;
        heard_at(&first, 1);
        heard_at(&second, 2);

        let third = registry.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(
            third.made_room,
            Some((Peer::of(ip("192.0.2.1")), Crowded::Peer))
        );
        assert!(closed(&first) && !closed(&second));

        // Busy connections are not taken: with both busy, the next one is refused.
        let _busy = [
            second.activity().start_request(),
            third.slot.activity().start_request(),
        ];
        assert_eq!(
            registry.admit(ip("192.0.2.1")).err(),
            Some(Refused::PeerFull {
                peer: Peer::of(ip("192.0.2.1")),
                cap: 2
            })
        );
        // Other clients, and a trusted proxy beyond the cap, get in.
        assert!(registry.admit(ip("192.0.2.2")).unwrap().made_room.is_none());
        let proxied: Vec<_> = (0..5)
            .map(|_| registry.admit(ip("10.9.1.1")).unwrap())
            .collect();
        assert!(proxied.iter().all(|a| a.made_room.is_none()));
        // A connection waiting for its body is not taken for its own client's next one.
        second.activity().awaiting_body(true);
        assert!(registry.admit(ip("192.0.2.1")).is_err());
    }

    #[test]
    fn a_full_host_closes_the_connection_silent_the_longest_that_its_client_holds() {
        let registry = Registry::new(limits(3, 10));
        let busy = registry.admit(ip("192.0.2.1")).unwrap().slot;
        let _handling = busy.activity().start_request();
        let stalled = registry.admit(ip("192.0.2.2")).unwrap().slot;
        let _stalled_request = stalled.activity().start_request();
        stalled.activity().awaiting_body(true);
        let idle = registry.admit(ip("192.0.2.3")).unwrap().slot;
        heard_at(&busy, 1);
        heard_at(&stalled, 2);
        heard_at(&idle, 3);

        // The stalled body has been silent longest of those its clients hold.
        assert!(registry.has_room());
        let newcomer = registry.admit(ip("192.0.2.9")).unwrap();
        assert_eq!(
            newcomer.made_room,
            Some((Peer::of(ip("192.0.2.2")), Crowded::Host))
        );
        assert!(closed(&stalled) && !closed(&busy) && !closed(&idle));
        // Then the idle one (the newcomer was heard from later); the busy one never.
        heard_at(&newcomer.slot, 4);
        let next = registry.admit(ip("192.0.2.10")).unwrap();
        assert!(closed(&idle) && !closed(&newcomer.slot));
        let _handling = [
            newcomer.slot.activity().start_request(),
            next.slot.activity().start_request(),
        ];
        // Room is counted without the ones asked to close, but those still hold
        // descriptors: beyond `closing` of them, nobody gets in until they are gone.
        assert!(!registry.has_room());
        assert_eq!(
            registry.admit(ip("192.0.2.11")).err(),
            Some(Refused::HostFull { cap: 3 })
        );
        drop(stalled);
        drop(idle);
        assert_eq!(registry.open(), 3);
        assert!(!registry.has_room(), "all three live ones are busy");
        drop(busy);
        assert!(registry.has_room());
    }

    #[tokio::test]
    async fn the_registry_empties_when_the_last_slot_goes() {
        let registry = Registry::new(limits(3, 3));
        let slot = registry.admit(ip("192.0.2.1")).unwrap().slot;
        let waiter = tokio::spawn({
            let registry = registry.clone();
            async move { registry.emptied().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(slot);
        waiter.await.unwrap();
        assert!(registry.book().live_per_peer.is_empty());
    }
}
