import LiteCLIPCommands

CLI.main(LiteclipConvert.self)
