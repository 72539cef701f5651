"""bitsandbytes' own tests (tests/peer/bnb) are not part of the main run: scripts/bnb_peer_suite.sh runs them
with their own pytest.ini (about an hour on two loaded cores)."""

collect_ignore = ["bnb"]
