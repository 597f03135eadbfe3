//! Fuzz target: everything a TCP peer's bytes reach before and after the
//! handshake, the frame splitter and reader, the handshake decoders and state
//! machine, and `paxos_core::wire::decode` on every frame body. Any panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paxos_core::handshake::{Handshake, HandshakeRules, Hello, Proof, Side};
use paxos_transport_tcp::frame::{split_frame, FrameReader, Split};

const LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    // The wire decoder on raw bytes, as if a frame body.
    let _ = paxos_core::wire::decode(data, LIMIT);

    // The pure splitter, frame after frame, exactly as the reader applies it.
    let mut rest = data;
    let mut split_bodies = Vec::new();
    while let Ok(Split::Frame { body, consumed }) = split_frame(rest, LIMIT) {
        assert!(!body.is_empty() && body.len() <= LIMIT);
        split_bodies.push(body);
        rest = &rest[consumed..];
    }

    // The async reader over the same bytes agrees with the splitter.
    futures::executor::block_on(async {
        let mut reader = FrameReader::new(futures::io::Cursor::new(data));
        let rules = HandshakeRules::new(7, 2, [1, 2, 3]).with_secret(b"fuzzing shared secret").unwrap();
        let mut handshake = Some(Handshake::new(rules, Side::Acceptor, [0; 16], None));
        let mut index = 0;
        while let Ok(Some(body)) = reader.next_frame(LIMIT).await {
            assert_eq!(body, split_bodies[index]);
            index += 1;
            let _ = Hello::decode(body);
            let _ = Proof::decode(body);
            // First frame as a hello, second as a proof, the rest as messages.
            match index {
                1 => {
                    if let Some(state) = handshake.as_mut() {
                        if state.on_hello(body).is_err() {
                            handshake = None;
                        }
                    }
                }
                2 => {
                    if let Some(state) = handshake.take() {
                        let _ = state.on_proof(body);
                    }
                }
                _ => {}
            }
            let _ = paxos_core::wire::decode(body, LIMIT);
        }
        assert_eq!(index, split_bodies.len());
    });
});
