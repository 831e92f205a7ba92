"""What a pretext task is: base classes, options, metrics, the reconstruction base."""
