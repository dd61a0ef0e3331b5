from pgmux.cli import main

raise SystemExit(main())
