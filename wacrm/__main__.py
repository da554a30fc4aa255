from wacrm.cli import main

raise SystemExit(main())
