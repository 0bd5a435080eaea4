"""Environments served over the OpenReward (ORS) protocol, and the server that serves them."""
