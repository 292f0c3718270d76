//! Rooms: who is in which room, and what each room remembers for late joiners.
//!
//! A room is named by a URL path and exists while it has members (or, with `--history`, until
//! its history expires). Members are connection keys; this module never touches connections or
//! sockets: the loop looks members up and queues frames to them. Nothing here assumes every
//! member is local, so a shared bus can later feed a room as one more source of messages.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;
use slab::Slab;

/// A room's key in the room table. Stable while the room exists.
pub type RoomKey = usize;

pub struct Room {
    pub name: Box<str>,
    /// Connection keys, in join order (swap-removed on leave).
    members: Vec<usize>,
    /// Encoded server frames of the last messages, oldest first.
    history: VecDeque<Bytes>,
    history_bytes: usize,
    /// When the last member left (for history expiry).
    pub emptied_at: Option<Instant>,
    /// Members that negotiated permessage-deflate: fan-out compresses (and looks at each
    /// member's agreement) only when this is above 0, so other rooms pay nothing.
    deflate_members: usize,
}

impl Room {
    pub fn members(&self) -> &[usize] {
        &self.members
    }

    pub fn history(&self) -> impl Iterator<Item = &Bytes> {
        self.history.iter()
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
}

/// What a join did to the room.
pub struct Joined {
    pub room: RoomKey,
    pub slot: usize,
    /// The room had no members before: a shared bus should start listening.
    pub first_member: bool,
}

/// What a leave did to the room.
pub struct Left {
    /// The member moved into the freed slot, whose slot number must be updated.
    pub moved: Option<usize>,
    /// The room has no members now: a shared bus may stop listening.
    pub last_member: bool,
    /// The room's name, when it has no members now.
    pub emptied: Option<Box<str>>,
}

impl Rooms {
    pub fn new(limits: HistoryLimits) -> Self {
        Rooms {
            table: Slab::new(),
            by_name: HashMap::new(),
            limits,
            occupied: 0,
            dormant: BTreeSet::new(),
        }
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

    /// Adds a member to the room named `name`, creating the room if needed.
    pub fn join(&mut self, name: &str, member: usize) -> Joined {
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
                    deflate_members: 0,
                });
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
        Joined {
            room,
            slot: entry.members.len() - 1,
            first_member,
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
            };
        };
        if slot >= entry.members.len() {
            return Left {
                moved: None,
                last_member: false,
                emptied: None,
            };
        }
        entry.members.swap_remove(slot);
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
        }
    }

    /// Remembers an encoded frame for late joiners, within the message and byte bounds.
    /// `frame` must be an owned copy: a slice of a client's read buffer would pin it.
    pub fn remember(&mut self, room: RoomKey, frame: Bytes) {
        let limits = self.limits;
        if limits.messages == 0 || frame.len() > limits.bytes {
            return;
        }
        let Some(entry) = self.table.get_mut(room) else {
            return;
        };
        entry.history_bytes += frame.len();
        entry.history.push_back(frame);
        while entry.history.len() > limits.messages || entry.history_bytes > limits.bytes {
            match entry.history.pop_front() {
                Some(old) => entry.history_bytes -= old.len(),
                None => break,
            }
        }
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
        let a = rooms.join("/x", 10);
        assert!(a.first_member);
        let b = rooms.join("/x", 11);
        let c = rooms.join("/x", 12);
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
        let j = rooms.join("/h", 1);
        for i in 0..5u8 {
            rooms.remember(j.room, Bytes::from(vec![i; 2]));
        }
        let kept: Vec<u8> = rooms.get(j.room).unwrap().history().map(|f| f[0]).collect();
        assert_eq!(kept, vec![2, 3, 4]);
        rooms.remember(j.room, Bytes::from(vec![9; 8]));
        let kept: Vec<usize> = rooms
            .get(j.room)
            .unwrap()
            .history()
            .map(|f| f.len())
            .collect();
        assert_eq!(kept, vec![2, 8], "byte bound drops the oldest");
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
            let j = rooms.join(name, i);
            rooms.remember(j.room, Bytes::from_static(b"x"));
            rooms.leave(j.room, j.slot, start + Duration::from_secs(i as u64));
        }
        assert_eq!(rooms.dormant(), 2);
        rooms.join("/c", 9);
        assert_eq!(rooms.key_of("/a"), None, "the longest dormant went");
        assert!(rooms.key_of("/b").is_some());
        assert_eq!(rooms.dormant(), 1);
        // A room revived by a join is no longer dormant: expiry leaves it alone.
        let b = rooms.join("/b", 10);
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
        let j = rooms.join("/h", 1);
        rooms.remember(j.room, Bytes::from_static(b"hi"));
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
}
