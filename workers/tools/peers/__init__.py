"""`rankstream bench-peers`: rankstream beside Infinity, FlashRank and a CrossEncoder.predict
loop, on the same weights and workload (see `rankstream.workers.tools.peers.run`)."""
