from callctl.cli import main

main()
