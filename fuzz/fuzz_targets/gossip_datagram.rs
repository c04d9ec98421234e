//! Gossip datagrams into one membership core, plaintext frames and the encrypted opener.
//!
//! Input: `mode:u8` then records (see `src/lib.rs`). `mode & 1` = encrypted: every datagram
//! goes through `Sealer::open` (key ring [`KEYS`]) before the core, as the driver does; plaintext
//! otherwise (datagrams straight into `Membership::handle_data`).
//!
//! Checks, besides "no panic, no abort":
//! - every datagram the core emits is at most `max_packet_size - SEAL_OVERHEAD` bytes and is a
//!   plaintext frame (`MAGIC`, version 1) — what the driver seals and sends;
//! - an opened datagram is a version-1 frame of length `sealed - SEAL_OVERHEAD`;
//! - authentic datagrams sealed here (documented format, independent of the `Sealer`) open
//!   exactly when a reference model of the replay window says so, and give back the frame;
//!   under an unknown key they fail with `UnknownKey`, from our own instance with `Replayed`,
//!   and tampered ones never open.

#![no_main]

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use ringcache_fuzz::{
    FOREIGN_KEY, INSTANCES, KEYS, LOCAL_INSTANCE, TimerQueue, config, keyring_text,
    local_membership, op, records, seal,
};
use ringcache_server::cluster::{
    DropReason, INSTANCE_ID_LEN, Keyring, MAGIC, Membership, REPLAY_WINDOW, SEAL_OVERHEAD, Sealer, WIRE_VERSION,
};

/// The reference replay window of one sender: highest counter and every counter opened.
#[derive(Default)]
struct Window {
    highest: Option<u64>,
    seen: BTreeSet<u64>,
}

impl Window {
    fn accepts(&self, counter: u64) -> bool {
        match self.highest {
            None => true,
            Some(highest) if counter > highest => true,
            Some(highest) => highest - counter < REPLAY_WINDOW && !self.seen.contains(&counter),
        }
    }

    fn record(&mut self, counter: u64) {
        self.highest = Some(self.highest.map_or(counter, |h| h.max(counter)));
        self.seen.insert(counter);
    }
}

struct Run {
    core: Membership,
    timers: TimerQueue,
    now: Duration,
    sealer: Option<Sealer>,
    windows: HashMap<usize, Window>,
    /// Authentic sealed datagrams of this run, for replays: (sender index, counter, bytes, frame).
    history: Vec<(usize, u64, Vec<u8>, Vec<u8>)>,
    plain: Vec<u8>,
    max_packet: usize,
}

impl Run {
    fn settle(&mut self) {
        for (_, packet) in self.core.take_packets() {
            assert!(
                packet.len() + SEAL_OVERHEAD <= self.max_packet,
                "core emitted a {}-byte datagram (max_packet_size {}, seal overhead {})",
                packet.len(),
                self.max_packet,
                SEAL_OVERHEAD
            );
            assert!(
                matches!(&packet[..], [MAGIC, WIRE_VERSION, _, ..]),
                "core emitted a datagram that is not a plaintext frame"
            );
        }
        self.timers.collect(self.now, &mut self.core);
    }

    fn feed_plain(&mut self, frame: &[u8]) {
        self.now += Duration::from_millis(1);
        let _ = self.core.handle_data(self.now, frame);
        self.settle();
    }

    /// A raw datagram, as the driver receives it.
    fn datagram(&mut self, datagram: &[u8]) {
        let Some(sealer) = &mut self.sealer else {
            self.feed_plain(datagram);
            return;
        };
        if !matches!(datagram, [MAGIC, 2, ..]) {
            return; // the driver drops plaintext at a node with a key ring
        }
        let mut plain = std::mem::take(&mut self.plain);
        if sealer.open(datagram, &mut plain).is_ok() {
            // Keep the reference windows in step with what the opener accepted.
            let instance = &datagram[7..7 + INSTANCE_ID_LEN];
            let counter = u64::from_be_bytes(datagram[23..31].try_into().expect("8 bytes"));
            if let Some(sender) = INSTANCES.iter().position(|i| &i[..] == instance) {
                let window = self.windows.entry(sender).or_default();
                assert!(window.accepts(counter), "opener accepted counter {counter} twice");
                window.record(counter);
            }
            assert_eq!(plain.len() + SEAL_OVERHEAD, datagram.len(), "opened length");
            assert_eq!(plain[..2], [MAGIC, WIRE_VERSION], "opened into a v1 frame");
            assert_eq!(plain[2], datagram[2], "opened frame keeps its kind");
            self.feed_plain(&plain);
        }
        self.plain = plain;
    }

    /// Payload `[sender, counter:u64le, key, tamper:u16le] frame`.
    fn sealed(&mut self, payload: &[u8]) {
        let [sender, c0, c1, c2, c3, c4, c5, c6, c7, key, t0, t1, frame @ ..] = payload else {
            return;
        };
        if self.sealer.is_none() {
            self.feed_plain(frame);
            return;
        }
        let sender = usize::from(*sender) % INSTANCES.len();
        let counter = u64::from_le_bytes([*c0, *c1, *c2, *c3, *c4, *c5, *c6, *c7]);
        let foreign = key % 3 == 2;
        let key_bytes = if foreign { &FOREIGN_KEY } else { &KEYS[usize::from(key % 3)] };
        let mut frame = frame.to_vec();
        // The sealer seals any kind byte; make the header a v1 frame like the driver's.
        if frame.len() >= 2 {
            frame[0] = MAGIC;
            frame[1] = WIRE_VERSION;
        }
        let Some(mut sealed) = seal(key_bytes, &INSTANCES[sender], counter, &frame) else {
            return;
        };
        // tamper: 0 = none, else flip bit (tamper - 1) of the datagram (if within it).
        let tamper = usize::from(u16::from_le_bytes([*t0, *t1]));
        let mut tampered = false;
        if tamper > 0 && (tamper - 1) / 8 < sealed.len() {
            sealed[(tamper - 1) / 8] ^= 1 << ((tamper - 1) % 8);
            tampered = true;
        }
        let Some(sealer) = &mut self.sealer else { return };
        let mut plain = std::mem::take(&mut self.plain);
        let result = sealer.open(&sealed, &mut plain);
        if tampered {
            assert!(result.is_err(), "a tampered datagram opened: {sealed:02x?}");
        } else if foreign {
            assert_eq!(result, Err(DropReason::UnknownKey), "foreign key");
        } else if INSTANCES[sender] == LOCAL_INSTANCE {
            assert_eq!(result, Err(DropReason::Replayed), "own instance");
        } else {
            let window = self.windows.entry(sender).or_default();
            if window.accepts(counter) {
                assert_eq!(result, Ok(()), "authentic datagram refused (counter {counter})");
                assert_eq!(plain, frame, "opened frame differs from the sealed one");
                window.record(counter);
            } else {
                assert_eq!(
                    result,
                    Err(DropReason::Replayed),
                    "window accepted counter {counter}"
                );
            }
            if self.history.len() < 64 {
                self.history.push((sender, counter, sealed.clone(), frame.clone()));
            }
        }
        if result.is_ok() {
            self.feed_plain(&plain);
        }
        self.plain = plain;
    }

    fn replay(&mut self, payload: &[u8]) {
        let (Some(sealer), Some(pick)) = (&mut self.sealer, payload.first()) else {
            return;
        };
        if self.history.is_empty() {
            return;
        }
        let (sender, counter, sealed, frame) =
            self.history[usize::from(*pick) % self.history.len()].clone();
        let mut plain = std::mem::take(&mut self.plain);
        let result = sealer.open(&sealed, &mut plain);
        let window = self.windows.entry(sender).or_default();
        if window.accepts(counter) {
            assert_eq!(result, Ok(()), "replayed authentic datagram refused");
            assert_eq!(plain, frame);
            window.record(counter);
            self.feed_plain(&plain);
        } else {
            assert_eq!(result, Err(DropReason::Replayed), "replay accepted (counter {counter})");
        }
        self.plain = plain;
    }

    fn timer(&mut self) {
        if let Some((due, timer)) = self.timers.pop() {
            self.now = self.now.max(due);
            self.core.handle_timer(self.now, timer);
            self.settle();
        }
    }

    fn control(&mut self, payload: &[u8]) {
        let step = match payload {
            [a, b, ..] => u64::from(u16::from_le_bytes([*a, *b])),
            _ => 0,
        };
        self.now += Duration::from_millis(step);
        let target = std::net::SocketAddr::from(([10, 0, 0, payload.get(3).copied().unwrap_or(2)], 7380));
        match payload.get(2).map(|b| b % 4) {
            Some(0) => self.core.join(self.now, vec![target]),
            Some(1) => self.core.announce(self.now, target),
            Some(2) => self.core.leave(self.now),
            _ => {}
        }
        self.settle();
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else { return };
    let sealer = (mode & 1 == 1).then(|| {
        let keyring = Keyring::parse(&keyring_text(), "fuzz").expect("fuzz key ring");
        Sealer::new(keyring, LOCAL_INSTANCE)
    });
    let mut run = Run {
        core: local_membership(),
        timers: TimerQueue::default(),
        now: Duration::ZERO,
        sealer,
        windows: HashMap::new(),
        history: Vec::new(),
        plain: Vec::new(),
        max_packet: config().max_packet_size.get(),
    };
    run.settle();
    for (record_op, payload) in records(rest) {
        match record_op % op::COUNT {
            op::DATAGRAM => run.datagram(payload),
            op::TIMER => run.timer(),
            op::SEALED => run.sealed(payload),
            op::REPLAY => run.replay(payload),
            _ => run.control(payload),
        }
    }
    // The view must stay consistent whatever came in.
    let members = run.core.members();
    let mut ids: Vec<&str> = members.iter().map(|m| m.node_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), members.len(), "a node id appears twice in the view");
});
