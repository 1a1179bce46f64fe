"""The async pipeline: bounded queues, stages and the runner that wires source -> infer -> smooth -> composite -> sinks."""
