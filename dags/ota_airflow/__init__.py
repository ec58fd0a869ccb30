"""What the OTA DAGs are built from: the settings they read (``settings``), the window
and command line of each step (``window``), the credentials a step gets (``credentials``),
the data it reads and writes (``lineage``) and the operators that run it
(``operators``). Importing it does no work: everything is read when a DAG file is parsed
or a task runs."""
