"""``explain``: what one session pod can reach, one destination at a time, and which object decides."""
