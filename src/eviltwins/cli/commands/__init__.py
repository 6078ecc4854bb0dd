"""The commands of ``eviltwins``, grouped by what they work on (registered in
:mod:`eviltwins.cli`)."""
