//! Rooms: who is in which room, and what each room remembers for late joiners.
//!
//! A room is named by a URL path and exists while it has members (or, with `--history`, until
//! its history expires). Members are connection keys; this module never touches connections or
//! sockets: the loop looks members up and queues frames to them. Nothing here assumes every
//! member is local, so a shared bus can later feed a room as one more source of messages.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use slab::Slab;

use crate::protocol_v1::{self, From, Since, V1Error};

/// Names a presence frame lists at most per direction; the rest are counted in `more`.
pub const PRESENCE_NAMES_MAX: usize = 16;

/// Who sent a remembered message, as `wschat.v1` members are told.
#[derive(Debug, Clone)]
pub enum Sender {
    Named(Arc<str>),
    /// A member that does not speak `wschat.v1`, by connection id (no name is stored).
    Guest(u64),
    /// Another node of the cluster.
    Remote,
}

impl Sender {
    pub fn as_from(&self) -> From<'_> {
        match self {
            Sender::Named(name) => From::Named(name),
            Sender::Guest(id) => From::Guest(*id),
            Sender::Remote => From::Remote,
        }
    }
}

/// One remembered message: its encoded raw frame (what raw late joiners get, byte-exact) and
/// what `wschat.v1` members are told about it.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    pub seq: u64,
    pub ts_ms: u64,
    pub from: Sender,
    pub frame: Bytes,
}

/// A member that speaks `wschat.v1`: its display name and its reconnect key.
#[derive(Debug, Clone)]
pub struct NamedMember {
    pub name: Arc<str>,
    pub key: Option<Box<str>>,
}

/// Joins and leaves not yet told to the room's `wschat.v1` members (coalesced by the loop's
/// presence timer).
#[derive(Debug, Default)]
struct PresenceNews {
    pending: bool,
    joined: Vec<Arc<str>>,
    left: Vec<Arc<str>>,
    more: usize,
}

/// What a reconnecting member is sent: `missed` (Some(None): an unknown number, the epoch
/// differs), then the history entries from index `skip` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    pub missed: Option<Option<u64>>,
    pub skip: usize,
}

/// A room's key in the room table. Stable while the room exists.
pub type RoomKey = usize;

pub struct Room {
    pub name: Box<str>,
    /// Connection keys, in join order (swap-removed on leave).
    members: Vec<usize>,
    /// The last messages, oldest first.
    history: VecDeque<HistoryEntry>,
    history_bytes: usize,
    /// When the last member left (for history expiry).
    pub emptied_at: Option<Instant>,
    /// Random when the room is created: a sequence number means nothing in another epoch
    /// (another process, another node, a room that was gone and came back).
    pub epoch: u64,
    /// The sequence number of the room's last message (0: none yet).
    pub last_seq: u64,
    /// The members that speak `wschat.v1`, by connection key (raw members have no entry).
    named: HashMap<usize, NamedMember>,
    presence: PresenceNews,
    /// Members that negotiated permessage-deflate: fan-out compresses (and looks at each
    /// member's agreement) only when this is above 0, so other rooms pay nothing.
    deflate_members: usize,
}

impl Room {
    pub fn members(&self) -> &[usize] {
        &self.members
    }

    pub fn history(&self) -> impl Iterator<Item = &HistoryEntry> {
        self.history.iter()
    }

    /// How many members speak `wschat.v1`: fan-out encodes their frame only when this is not 0.
    pub fn v1_members(&self) -> usize {
        self.named.len()
    }

    /// A `wschat.v1` member's name.
    pub fn name_of(&self, member: usize) -> Option<&Arc<str>> {
        self.named.get(&member).map(|m| &m.name)
    }

    /// Takes the next sequence number. Called once per message relayed in this room.
    pub fn next_seq(&mut self) -> u64 {
        self.last_seq += 1;
        self.last_seq
    }

    /// Whether `name` belongs to another connected member. A member reconnecting with the
    /// key its previous connection gave may reuse the name that connection still holds
    /// (it has not timed out yet).
    pub fn name_taken(&self, name: &str, key: Option<&str>) -> bool {
        self.named.values().any(|m| {
            protocol_v1::same_name(&m.name, name) && !(key.is_some() && m.key.as_deref() == key)
        })
    }

    /// What a member arriving with `since` is sent. Every message after `since` that history
    /// no longer holds (trimmed, too large to keep, history off) is counted as missed.
    pub fn recovery(&self, since: Option<Since>) -> Result<Recovery, V1Error> {
        let Some(since) = since else {
            // A first visit: the history, as any late joiner gets it.
            return Ok(Recovery {
                missed: None,
                skip: 0,
            });
        };
        if since.epoch != self.epoch {
            return Ok(Recovery {
                missed: Some(None),
                skip: self.history.len(),
            });
        }
        if since.seq > self.last_seq {
            return Err(V1Error::Since("ahead of the room's last message"));
        }
        let skip = self.history.partition_point(|e| e.seq <= since.seq);
        let kept = (self.history.len() - skip) as u64;
        let missed = self.last_seq - since.seq - kept;
        Ok(Recovery {
            missed: (missed > 0).then_some(Some(missed)),
            skip,
        })
    }

    /// Notes a join or leave for the next presence frame; true if the room was not pending
    /// yet (the caller lists it for the timer).
    fn note_presence(&mut self, joined: Option<Arc<str>>, left: Option<Arc<str>>) -> bool {
        if self.named.is_empty() {
            // Nobody here speaks wschat.v1: raw rooms pay nothing for presence.
            return false;
        }
        let news = &mut self.presence;
        for (name, list) in [(joined, &mut news.joined), (left, &mut news.left)] {
            if let Some(name) = name {
                if list.len() < PRESENCE_NAMES_MAX {
                    list.push(name);
                } else {
                    news.more += 1;
                }
            }
        }
        !std::mem::replace(&mut news.pending, true)
    }

    /// The presence frame owed to the room's `wschat.v1` members, if any (and clears it).
    pub fn take_presence(&mut self) -> Option<String> {
        if !self.presence.pending {
            return None;
        }
        let news = std::mem::take(&mut self.presence);
        if self.named.is_empty() {
            return None;
        }
        Some(protocol_v1::presence(
            self.members.len(),
            &news.joined,
            &news.left,
            news.more,
        ))
    }

    /// Members that negotiated permessage-deflate.
    pub fn deflate_members(&self) -> usize {
        self.deflate_members
    }
}

/// How much history each room keeps.
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    pub messages: usize,
    pub bytes: usize,
    /// Rooms kept at most, with members or history. Members are capped by the connection
    /// cap, but dormant rooms (history only) are not: one client joining, speaking and
    /// leaving room after room would grow them without bound. Opening a room at this cap
    /// drops the longest-dormant one first. The loop passes the connection cap, so history
    /// memory stays within `bytes` × connection cap.
    pub rooms: usize,
}

pub struct Rooms {
    table: Slab<Room>,
    by_name: HashMap<Box<str>, RoomKey>,
    limits: HistoryLimits,
    /// Rooms with members (the others only hold history).
    occupied: usize,
    /// Rooms without members, by when they emptied: expiry and eviction take the oldest.
    dormant: BTreeSet<(Instant, RoomKey)>,
    /// Seeds room epochs: random per process, so a restart never reuses one.
    epoch_seed: RandomState,
    rooms_created: u64,
}

/// What a join did to the room.
pub struct Joined {
    pub room: RoomKey,
    pub slot: usize,
    /// The room had no members before: a shared bus should start listening.
    pub first_member: bool,
    /// The room owes its `wschat.v1` members a presence frame now and did not before.
    pub presence_due: bool,
}

/// What a leave did to the room.
pub struct Left {
    /// The member moved into the freed slot, whose slot number must be updated.
    pub moved: Option<usize>,
    /// The room has no members now: a shared bus may stop listening.
    pub last_member: bool,
    /// The room's name, when it has no members now.
    pub emptied: Option<Box<str>>,
    /// The room owes its `wschat.v1` members a presence frame now and did not before.
    pub presence_due: bool,
}

impl Rooms {
    pub fn new(limits: HistoryLimits) -> Self {
        Rooms {
            table: Slab::new(),
            by_name: HashMap::new(),
            limits,
            occupied: 0,
            dormant: BTreeSet::new(),
            epoch_seed: RandomState::new(),
            rooms_created: 0,
        }
    }

    pub fn get_mut(&mut self, key: RoomKey) -> Option<&mut Room> {
        self.table.get_mut(key)
    }

    /// Whether `name` is used by another connected member of the room named `room`.
    pub fn name_taken(&self, room: &str, name: &str, key: Option<&str>) -> bool {
        self.key_of(room)
            .and_then(|k| self.table.get(k))
            .is_some_and(|r| r.name_taken(name, key))
    }

    /// Rooms that have members now.
    pub fn occupied(&self) -> usize {
        self.occupied
    }

    pub fn get(&self, key: RoomKey) -> Option<&Room> {
        self.table.get(key)
    }

    pub fn key_of(&self, name: &str) -> Option<RoomKey> {
        self.by_name.get(name).copied()
    }

    /// Adds a member to the room named `name`, creating the room if needed; `named` for a
    /// member that speaks `wschat.v1`.
    pub fn join(&mut self, name: &str, member: usize, named: Option<NamedMember>) -> Joined {
        let room = match self.by_name.get(name) {
            Some(&key) => key,
            None => {
                if self.table.len() >= self.limits.rooms.max(1) {
                    self.evict_longest_dormant();
                }
                let key = self.table.insert(Room {
                    name: name.into(),
                    members: Vec::new(),
                    history: VecDeque::new(),
                    history_bytes: 0,
                    emptied_at: None,
                    epoch: {
                        let mut hasher = self.epoch_seed.build_hasher();
                        hasher.write_u64(self.rooms_created);
                        hasher.finish()
                    },
                    last_seq: 0,
                    named: HashMap::new(),
                    presence: PresenceNews::default(),
                    deflate_members: 0,
                });
                self.rooms_created += 1;
                self.by_name.insert(name.into(), key);
                key
            }
        };
        let entry = &mut self.table[room];
        let first_member = entry.members.is_empty();
        if first_member {
            self.occupied += 1;
        }
        if let Some(emptied) = entry.emptied_at.take() {
            self.dormant.remove(&(emptied, room));
        }
        entry.members.push(member);
        let joined_name = named.as_ref().map(|n| n.name.clone());
        if let Some(named) = named {
            entry.named.insert(member, named);
        }
        let presence_due = entry.note_presence(joined_name, None);
        Joined {
            room,
            slot: entry.members.len() - 1,
            first_member,
            presence_due,
        }
    }

    /// Counts a member with permessage-deflate in (`joined`) or out of its room. Called by
    /// the loop after `join` and before `leave` for the members that negotiated it.
    pub fn count_deflate_member(&mut self, room: RoomKey, joined: bool) {
        if let Some(entry) = self.table.get_mut(room) {
            entry.deflate_members = if joined {
                entry.deflate_members + 1
            } else {
                entry.deflate_members.saturating_sub(1)
            };
        }
    }

    /// Removes the member at `slot`. A room with neither members nor history is removed.
    pub fn leave(&mut self, room: RoomKey, slot: usize, now: Instant) -> Left {
        let Some(entry) = self.table.get_mut(room) else {
            return Left {
                moved: None,
                last_member: false,
                emptied: None,
                presence_due: false,
            };
        };
        if slot >= entry.members.len() {
            return Left {
                moved: None,
                last_member: false,
                emptied: None,
                presence_due: false,
            };
        }
        let member = entry.members.swap_remove(slot);
        let left_name = entry.named.remove(&member).map(|n| n.name);
        // Counted even when a raw member leaves: the count changes for everyone.
        let presence_due = entry.note_presence(None, left_name);
        let moved = entry.members.get(slot).copied();
        let last_member = entry.members.is_empty();
        let emptied = last_member.then(|| entry.name.clone());
        if last_member {
            self.occupied -= 1;
            if entry.history.is_empty() {
                let name = entry.name.clone();
                self.by_name.remove(&name);
                self.table.remove(room);
            } else {
                entry.emptied_at = Some(now);
                self.dormant.insert((now, room));
            }
        }
        Left {
            moved,
            last_member,
            emptied,
            presence_due,
        }
    }

    /// Remembers a message for late joiners, within the message and byte bounds. Its frame
    /// must be an owned copy: a slice of a client's read buffer would pin it.
    pub fn remember(&mut self, room: RoomKey, message: HistoryEntry) {
        let limits = self.limits;
        if limits.messages == 0 || message.frame.len() > limits.bytes {
            return;
        }
        let Some(entry) = self.table.get_mut(room) else {
            return;
        };
        entry.history_bytes += message.frame.len();
        entry.history.push_back(message);
        while entry.history.len() > limits.messages || entry.history_bytes > limits.bytes {
            match entry.history.pop_front() {
                Some(old) => entry.history_bytes -= old.frame.len(),
                None => break,
            }
        }
    }

    /// Bytes of history held in all rooms.
    pub fn history_bytes(&self) -> usize {
        self.table.iter().map(|(_, room)| room.history_bytes).sum()
    }

    /// Near the memory ceiling, last of all: drops the oldest history entries, room by room,
    /// until `bytes` are freed. Returns the bytes freed.
    pub fn trim_history(&mut self, bytes: usize) -> usize {
        let mut freed = 0;
        for (_, room) in self.table.iter_mut() {
            while freed < bytes {
                match room.history.pop_front() {
                    Some(old) => {
                        room.history_bytes -= old.frame.len();
                        freed += old.frame.len();
                    }
                    None => break,
                }
            }
        }
        freed
    }

    /// Drops empty rooms whose history is older than `ttl`. Returns the earliest time another
    /// room will expire, for the loop's timer. Called when that timer comes due.
    pub fn expire_history(&mut self, now: Instant, ttl: std::time::Duration) -> Option<Instant> {
        while let Some(&(emptied, key)) = self.dormant.first() {
            if emptied + ttl > now {
                return Some(emptied + ttl);
            }
            self.dormant.pop_first();
            self.remove_room(key);
        }
        None
    }

    /// Makes room for a new room at the room cap: the room dormant longest goes.
    fn evict_longest_dormant(&mut self) {
        if let Some((_, key)) = self.dormant.pop_first() {
            self.remove_room(key);
        }
    }

    fn remove_room(&mut self, key: RoomKey) {
        if let Some(room) = self.table.try_remove(key) {
            self.by_name.remove(&room.name);
        }
    }

    /// Rooms that only hold history (no members).
    pub fn dormant(&self) -> usize {
        self.table.len() - self.occupied
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry(seq: u64, frame: Bytes) -> HistoryEntry {
        HistoryEntry {
            seq,
            ts_ms: 0,
            from: Sender::Remote,
            frame,
        }
    }

    fn named(name: &str, key: Option<&str>) -> Option<NamedMember> {
        Some(NamedMember {
            name: name.into(),
            key: key.map(Into::into),
        })
    }

    fn rooms(messages: usize, bytes: usize) -> Rooms {
        Rooms::new(HistoryLimits {
            messages,
            bytes,
            rooms: 100,
        })
    }

    #[test]
    fn join_and_leave_keep_slots_consistent() {
        let mut rooms = rooms(0, 0);
        let now = Instant::now();
        let a = rooms.join("/x", 10, None);
        assert!(a.first_member);
        let b = rooms.join("/x", 11, None);
        let c = rooms.join("/x", 12, None);
        assert_eq!((a.slot, b.slot, c.slot), (0, 1, 2));
        let left = rooms.leave(a.room, a.slot, now);
        assert_eq!(left.moved, Some(12));
        assert_eq!(rooms.get(a.room).unwrap().members(), &[12, 11]);
        assert!(!left.last_member);
        rooms.leave(a.room, 1, now);
        let last = rooms.leave(a.room, 0, now);
        assert!(last.last_member);
        assert_eq!(
            rooms.key_of("/x"),
            None,
            "an empty room without history is gone"
        );
        assert_eq!(rooms.occupied(), 0);
    }

    #[test]
    fn history_is_bounded_by_count_and_bytes() {
        let mut rooms = rooms(3, 10);
        let j = rooms.join("/h", 1, None);
        for i in 0..5u8 {
            rooms.remember(j.room, entry(0, Bytes::from(vec![i; 2])));
        }
        let kept: Vec<u8> = rooms
            .get(j.room)
            .unwrap()
            .history()
            .map(|f| f.frame[0])
            .collect();
        assert_eq!(kept, vec![2, 3, 4]);
        rooms.remember(j.room, entry(0, Bytes::from(vec![9; 8])));
        let kept: Vec<usize> = rooms
            .get(j.room)
            .unwrap()
            .history()
            .map(|f| f.frame.len())
            .collect();
        assert_eq!(kept, vec![2, 8], "byte bound drops the oldest");
    }

    #[test]
    fn history_is_trimmed_oldest_first_on_demand() {
        let mut rooms = rooms(10, 1000);
        let j = rooms.join("/t", 1, None);
        for i in 0..5u8 {
            rooms.remember(j.room, entry(0, Bytes::from(vec![i; 10])));
        }
        assert_eq!(rooms.history_bytes(), 50);
        assert_eq!(rooms.trim_history(15), 20, "whole entries go");
        let kept: Vec<u8> = rooms
            .get(j.room)
            .unwrap()
            .history()
            .map(|f| f.frame[0])
            .collect();
        assert_eq!(kept, vec![2, 3, 4]);
        assert_eq!(rooms.history_bytes(), 30);
        assert_eq!(rooms.trim_history(1000), 30);
        assert_eq!(rooms.history_bytes(), 0);
    }

    #[test]
    fn a_new_room_at_the_room_cap_evicts_the_longest_dormant() {
        let mut rooms = Rooms::new(HistoryLimits {
            messages: 10,
            bytes: 1000,
            rooms: 2,
        });
        let start = Instant::now();
        for (i, name) in ["/a", "/b"].into_iter().enumerate() {
            let j = rooms.join(name, i, None);
            rooms.remember(j.room, entry(0, Bytes::from_static(b"x")));
            rooms.leave(j.room, j.slot, start + Duration::from_secs(i as u64));
        }
        assert_eq!(rooms.dormant(), 2);
        rooms.join("/c", 9, None);
        assert_eq!(rooms.key_of("/a"), None, "the longest dormant went");
        assert!(rooms.key_of("/b").is_some());
        assert_eq!(rooms.dormant(), 1);
        // A room revived by a join is no longer dormant: expiry leaves it alone.
        let b = rooms.join("/b", 10, None);
        assert_eq!(
            rooms.expire_history(start + Duration::from_secs(99), Duration::ZERO),
            None
        );
        assert_eq!(rooms.key_of("/b"), Some(b.room));
    }

    #[test]
    fn history_outlives_members_until_the_ttl() {
        let mut rooms = rooms(10, 1000);
        let start = Instant::now();
        let j = rooms.join("/h", 1, None);
        rooms.remember(j.room, entry(0, Bytes::from_static(b"hi")));
        rooms.leave(j.room, j.slot, start);
        assert_eq!(rooms.key_of("/h"), Some(j.room));
        assert_eq!(rooms.dormant(), 1);
        let ttl = Duration::from_secs(5);
        assert_eq!(
            rooms.expire_history(start + Duration::from_secs(1), ttl),
            Some(start + ttl)
        );
        assert_eq!(rooms.expire_history(start + ttl, ttl), None);
        assert_eq!(rooms.key_of("/h"), None);
    }

    /// Relays `n` messages into a room the way the loop does: a sequence each, remembered.
    fn say(rooms: &mut Rooms, room: RoomKey, n: usize) {
        for _ in 0..n {
            let seq = rooms.get_mut(room).unwrap().next_seq();
            rooms.remember(room, entry(seq, Bytes::from_static(b"xx")));
        }
    }

    #[test]
    fn recovery_sends_exactly_what_follows_since_or_counts_what_is_gone() {
        let mut rooms = rooms(3, 1000);
        let j = rooms.join("/r", 1, None);
        say(&mut rooms, j.room, 5);
        let room = rooms.get(j.room).unwrap();
        let epoch = room.epoch;
        let since = |seq| Some(Since { epoch, seq });
        assert_eq!(
            room.recovery(None).unwrap(),
            Recovery {
                missed: None,
                skip: 0
            }
        );
        // History holds 3, 4, 5.
        assert_eq!(
            room.recovery(since(3)).unwrap(),
            Recovery {
                missed: None,
                skip: 1
            }
        );
        assert_eq!(
            room.recovery(since(5)).unwrap(),
            Recovery {
                missed: None,
                skip: 3
            }
        );
        assert_eq!(
            room.recovery(since(0)).unwrap(),
            Recovery {
                missed: Some(Some(2)),
                skip: 0
            }
        );
        assert!(room.recovery(since(6)).is_err(), "ahead of the room");
        assert_eq!(
            room.recovery(Some(Since {
                epoch: epoch ^ 1,
                seq: 2
            }))
            .unwrap(),
            Recovery {
                missed: Some(None),
                skip: 3
            }
        );
    }

    #[test]
    fn without_history_every_message_after_since_is_missed() {
        let mut rooms = rooms(0, 0);
        let j = rooms.join("/r", 1, None);
        say(&mut rooms, j.room, 4);
        let room = rooms.get(j.room).unwrap();
        let since = Some(Since {
            epoch: room.epoch,
            seq: 1,
        });
        assert_eq!(
            room.recovery(since).unwrap(),
            Recovery {
                missed: Some(Some(3)),
                skip: 0
            }
        );
    }

    #[test]
    fn epochs_differ_between_rooms() {
        let mut rooms = rooms(0, 0);
        let a = rooms.join("/a", 1, None);
        let b = rooms.join("/b", 2, None);
        assert_ne!(
            rooms.get(a.room).unwrap().epoch,
            rooms.get(b.room).unwrap().epoch
        );
    }

    #[test]
    fn names_are_unique_per_room_unless_the_key_matches() {
        let mut rooms = rooms(0, 0);
        rooms.join("/n", 1, named("Ana", Some("k1")));
        assert!(rooms.name_taken("/n", "ana", None));
        assert!(rooms.name_taken("/n", "ANA", Some("k2")));
        assert!(
            !rooms.name_taken("/n", "Ana", Some("k1")),
            "the same session reconnecting"
        );
        assert!(!rooms.name_taken("/other", "Ana", None));
        assert!(!rooms.name_taken("/n", "Bob", None));
    }

    #[test]
    fn presence_is_coalesced_and_raw_rooms_owe_none() {
        let now = Instant::now();
        let mut rooms = rooms(0, 0);
        let raw = rooms.join("/p", 1, None);
        assert!(!raw.presence_due, "no wschat.v1 member: nothing to tell");
        let a = rooms.join("/p", 2, named("a", None));
        assert!(a.presence_due);
        let b = rooms.join("/p", 3, named("b", None));
        assert!(!b.presence_due, "already pending");
        let left = rooms.leave(a.room, a.slot, now);
        assert!(!left.presence_due);
        let frame = rooms.get_mut(a.room).unwrap().take_presence().unwrap();
        assert_eq!(
            frame,
            r#"{"t":"presence","count":2,"joined":["a","b"],"left":["a"]}"#
        );
        assert_eq!(rooms.get_mut(a.room).unwrap().take_presence(), None);
        assert_eq!(rooms.get(a.room).unwrap().v1_members(), 1);
    }
}
