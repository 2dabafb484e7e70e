"""Key material per algorithm, and sealing of secrets under the master key."""
