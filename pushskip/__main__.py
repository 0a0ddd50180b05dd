from pushskip.cli import main

raise SystemExit(main())
