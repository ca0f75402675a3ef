"""What the tests share: tiny models, fixtures (registered by tests/conftest.py) and helpers.

Modules:
    tiny_models         the tiny open_clip configs with random weights, registered on import
    fixtures            the shared pytest fixtures (tiny_clip, tiny_bidir, one_thread, stores, images)
    store               stores on either engine, synthetic inputs, reading stored vectors back
    image_folders       labelled folders of synthetic images
    inversion_targets   targets the tiny models can reach exactly (inversion tests)
    cli                 running the command line in-process
    store_kill_worker   a helper process that the store lifecycle tests kill mid-ingestion
"""
