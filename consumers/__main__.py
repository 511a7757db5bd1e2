from consumers.main import main

main()
