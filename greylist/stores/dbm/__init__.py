"""The embedded default store: two dbm files, as the reference keeps them.

Files ``<dir>/greylist_Passed`` and ``<dir>/greylist_NotPassed``, in the
flavour stdlib ``dbm.open`` picks (gdbm where the interpreter has it, else
ndbm, else dbm.dumb), keys the triplet digests, values integer Unix time as
text.  The reference (courier-pythonfilter 3.0.6) reads what we write and we
read what it wrote, so an upgrade or a rollback re-greylists nobody.

The rooms:

* ``lock.py``: the store lock (threads and processes) and its header;
* ``store.py``: the store, and how a message's transaction reads and writes;
* ``gdbm_table.py``: a gdbm file never written in place, its changes in a journal;
* ``journal.py``: the journal's format;
* ``fold.py``: how a fold replaces a gdbm file; ``fold_copy.py``: its copy and
  the copying child's protocol;
* ``dumb_table.py``: dbm.dumb's format, written safely;
* ``tables.py``: what every table does, and any other flavour (ndbm);
* ``files.py``: whole writes, durable renames, temporary names.
"""

from .lock import LOCK_NAME, LockFileError
from .store import DbmStore, preferred_flavour

__all__ = ["LOCK_NAME", "DbmStore", "LockFileError", "preferred_flavour"]
