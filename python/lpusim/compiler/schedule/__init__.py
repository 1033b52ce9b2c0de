"""Static scheduling: storage formats, resources, the scheduler and its SXM and C2C parts."""
