"""The join worker: parse, watermark, event-time join, batch loop, commit, Faust adapter."""
