"""What a client's uploads reveal, and the mechanisms that limit it: secure aggregation (:mod:`.secagg`)."""
