"""Loading models: diffusers folders, single files in their original layouts, model specs,
bundled models and hub models become :class:`pangudraw.expert.Expert` objects.

- :mod:`.models`: :func:`~.models.load_expert` (any model path), ControlNets, and the
  cache of loaded models a process shares (:class:`~.models.ModelCache`);
- :mod:`.folder`: diffusers folders, and assembling an expert from its parts;
- :mod:`.single`: single files and model specs;
- :mod:`.components`: the classes a folder may name (the allow-list) and the cache that
  loads the same files on disk once;
- :mod:`.schedulers`: checking a scheduler config, and the published ones.
"""
