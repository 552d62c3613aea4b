from callctl.app import main

main()
