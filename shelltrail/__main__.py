from shelltrail.cli import main

raise SystemExit(main())
