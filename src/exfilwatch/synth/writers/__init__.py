"""One writer per log format: the generators and the tests write every format through these.

Contract of a writer module (`pulse_secure`, `postfix`, `exchange`, `zeek_conn`):

* it knows the vendor's format and nothing about who the users are or what happens when: values
  in (an event record), a line in the vendor's real format out;
* the format is defined once, as DuckDB SQL macros that `install(con)` creates on a connection, so
  a generator renders millions of rows in bulk with `SELECT <writer>_line(...) FROM rows`;
* plain Python functions (`line`, `lines`, message helpers, `write`) evaluate the same macros for
  a few records, for the tests and small fixture scripts; the file writers put the format's
  header (and trailer) around the lines where the format has one.

Byte-for-byte stability matters: the demo's numbers depend on the generated files, so a change to
a macro changes every dataset generated with the same seed.
"""
