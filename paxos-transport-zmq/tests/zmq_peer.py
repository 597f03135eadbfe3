#!/usr/bin/python3
"""A libzmq peer (pyzmq) for paxos-transport-zmq's interop test.

Modes:
  dealer ENDPOINT ROUTING_ID HELLO_HEX PROOF_HEX BODY_HEX
      Connects a DEALER with ROUTING_ID to a node's ROUTER, runs the handshake
      with the given hello and proof, then sends one protocol message whose
      body is BODY_HEX, carrying the session token from the node's hello.
  router HELLO_HEX PROOF_HEX COUNT
      Binds a ROUTER on a free loopback port, prints it, answers each HELLO with
      the given hello and proof, and prints every message it receives until
      COUNT protocol messages arrived.

Every line on stdout is one JSON object. Exit status 3 means pyzmq is missing.
"""

import json
import sys

try:
    import zmq
except ImportError:
    print(json.dumps({"event": "error", "error": "python3-zmq (pyzmq) is not installed"}), flush=True)
    sys.exit(3)

TIMEOUT_MS = 10_000
# In a hello: magic 4, version 1, flags 1, cluster 8, node 8, then the 16-byte nonce.
NONCE = slice(22, 38)


def emit(**fields):
    print(json.dumps(fields), flush=True)


def receive(socket):
    if not socket.poll(TIMEOUT_MS):
        emit(event="error", error="timed out waiting for the node")
        sys.exit(1)
    return socket.recv_multipart()


def dealer(endpoint, routing_id, hello_hex, proof_hex, body_hex):
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.ROUTING_ID, routing_id.encode())
    socket.connect(endpoint)
    socket.send_multipart([b"HELLO", bytes.fromhex(hello_hex)])
    hello = receive(socket)
    if hello[0] != b"HELLO":
        emit(event="error", error="expected HELLO", frames=[frame.hex() for frame in hello])
        sys.exit(1)
    token = hello[1][NONCE]
    proof = receive(socket)
    if proof[0] != b"PROOF":
        emit(event="error", error="expected PROOF", frames=[frame.hex() for frame in proof])
        sys.exit(1)
    socket.send_multipart([b"PROOF", bytes.fromhex(proof_hex)])
    socket.send_multipart([b"MSG", token, bytes.fromhex(body_hex)])
    emit(event="sent", libzmq=zmq.zmq_version(), token=token.hex())
    # Linger until the queued frames are on the wire.
    socket.close(linger=TIMEOUT_MS)
    context.term()


def router(hello_hex, proof_hex, count):
    context = zmq.Context()
    socket = context.socket(zmq.ROUTER)
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    emit(event="listening", port=port, libzmq=zmq.zmq_version())
    received = 0
    while received < count:
        frames = receive(socket)
        emit(event="frames", frames=[frame.hex() for frame in frames])
        if len(frames) >= 2 and frames[1] == b"HELLO":
            socket.send_multipart([frames[0], b"HELLO", bytes.fromhex(hello_hex)])
            socket.send_multipart([frames[0], b"PROOF", bytes.fromhex(proof_hex)])
        elif len(frames) >= 2 and frames[1] == b"MSG":
            received += 1
    socket.close(linger=0)
    context.term()
    emit(event="done")


if __name__ == "__main__":
    if sys.argv[1] == "dealer":
        dealer(*sys.argv[2:7])
    elif sys.argv[1] == "router":
        router(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        emit(event="error", error="unknown mode " + sys.argv[1])
        sys.exit(2)
