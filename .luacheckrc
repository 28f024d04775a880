std = "lua54"
max_line_length = 120
files["spec"] = {std = "+busted", max_line_length = 130}
files["bench"] = {max_line_length = 130}
exclude_files = {"build", "build-asan"}
