//! SGLang-style prefill/decode rendezvous. A prefill engine records when the prefill of
//! a `bootstrap_room` is done; the decode engine asks the prefill's bootstrap endpoint
//! (`GET /sim/bootstrap/{room}` on `bootstrap_host:bootstrap_port`) and waits for it
//! before decoding with the transferred KV.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How a room ended on the prefill side.
#[derive(Clone, Debug, PartialEq)]
pub enum RoomState {
    Pending,
    /// Prefill done; this many prompt tokens of KV are ready.
    Ready(usize),
    Failed(String),
}

const ROOM_TTL: Duration = Duration::from_secs(300);

/// Rooms known to one prefill server.
#[derive(Default)]
pub struct Rooms {
    rooms: Mutex<HashMap<u64, (watch::Sender<RoomState>, Instant)>>,
}

impl Rooms {
    fn channel(&self, room: u64) -> watch::Sender<RoomState> {
        let mut rooms = self.rooms.lock().expect("rooms lock");
        if rooms.len() > 4096 {
            let now = Instant::now();
            rooms.retain(|_, (_, t)| now.duration_since(*t) < ROOM_TTL);
        }
        rooms
            .entry(room)
            .or_insert_with(|| (watch::Sender::new(RoomState::Pending), Instant::now()))
            .0
            .clone()
    }

    /// Marks a room's prefill as finished or failed.
    pub fn complete(&self, room: u64, state: RoomState) {
        self.channel(room).send_replace(state);
    }

    /// Waits up to `timeout` for the room's prefill; the room is forgotten once read.
    pub async fn wait(&self, room: u64, timeout: Duration) -> RoomState {
        let mut rx = self.channel(room).subscribe();
        let res = tokio::time::timeout(timeout, rx.wait_for(|s| *s != RoomState::Pending)).await;
        let state = match res {
            Ok(Ok(s)) => s.clone(),
            Ok(Err(_)) => RoomState::Failed("room closed".into()),
            Err(_) => RoomState::Failed(format!(
                "prefill of room {room} not done within {timeout:?}"
            )),
        };
        if state != RoomState::Pending {
            self.rooms.lock().expect("rooms lock").remove(&room);
        }
        state
    }
}
