"""Time-decoupled training: data, losses with timestep ranges, the accelerate loop, export."""
