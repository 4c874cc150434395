"""Looking at runs: ``simpletir view`` (an offline HTML trajectory browser), ``simpletir plot``
(training curves as a PNG). Both only read a run's files; neither imports the trainer or an engine."""
