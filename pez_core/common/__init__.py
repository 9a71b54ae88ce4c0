"""What every layer of pez_core shares: errors a user can act on, input bounds and the cancel hook,
the device and its memory, and the one offline check. Imports nothing else of pez_core."""
