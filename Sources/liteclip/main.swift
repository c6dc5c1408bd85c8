import LiteCLIPCommands

CLI.main(Liteclip.self)
