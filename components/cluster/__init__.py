"""The Ray side of a stage: connecting, resources, and the processes it leaves."""
