"""``python -m asd.synthetic``: see ``asd.synthetic.command``."""

from asd.synthetic.command import main

raise SystemExit(main())
